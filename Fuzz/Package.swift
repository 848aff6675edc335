// swift-tools-version:6.0
// libFuzzer targets for tcp-crossover's parsers and PROXY header encoder: a package of its own, so that the main
// package stays free of fuzzing code. Built and run by `make fuzz` (mk/fuzz.mk); see README.md here.
import PackageDescription

// A path dependency's identity is the last component of its directory (the clone's name, "main" or
// "tcp-crossover"), so it is worked out here rather than written down.
let mainPackage = Context.packageDirectory.split(separator: "/").dropLast().last.map(String.init) ?? "tcp-crossover"

let package = Package(
    name: "tcp-crossover-fuzz",
    products: [
        .executable(name: "fuzz-endpoint", targets: ["fuzz-endpoint"]),
        .executable(name: "fuzz-command-line", targets: ["fuzz-command-line"]),
        .executable(name: "fuzz-options", targets: ["fuzz-options"]),
        .executable(name: "fuzz-proxy-header", targets: ["fuzz-proxy-header"]),
    ],
    dependencies: [
        .package(path: "..")
    ],
    targets: [
        // Declares libFuzzer's LLVMFuzzerRunDriver, which only a -sanitize=fuzzer build links.
        .target(name: "CFuzzerDriver"),
        // The fuzz targets and the driver that runs them (under libFuzzer, or once per file without it).
        .target(
            name: "FuzzTargets",
            dependencies: [
                "CFuzzerDriver",
                .product(name: "TCPCrossover", package: mainPackage),
            ]
        ),
        .executableTarget(name: "fuzz-endpoint", dependencies: ["FuzzTargets"]),
        .executableTarget(name: "fuzz-command-line", dependencies: ["FuzzTargets"]),
        .executableTarget(name: "fuzz-options", dependencies: ["FuzzTargets"]),
        .executableTarget(name: "fuzz-proxy-header", dependencies: ["FuzzTargets"]),
    ]
)
