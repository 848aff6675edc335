// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "tcp-crossover",
    products: [
        .executable(name: "tcp-crossover", targets: ["tcp-crossover"]),
        // The core, for the fuzzing package in Fuzz/.
        .library(name: "TCPCrossover", targets: ["TCPCrossover"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
    ],
    targets: [
        // The Linux calls that Swift's Glibc module does not expose (epoll, splice, pipe2, accept4, F_SETPIPE_SZ,
        // signalfd, eventfd, syslog), and libsystemd's sd-daemon calls, loaded when first needed. `_GNU_SOURCE` is
        // defined inside the C files only: passed to Swift it would change the signatures of bind/accept.
        // Release builds fortify its libc calls (syslog, among them: checked variants, as Debian's hardening flags give
        // C code); the Swift code above calls libc through typed wrappers with explicit sizes.
        .target(
            name: "CLinux", dependencies: ["CSystemd"],
            cSettings: [.define("_FORTIFY_SOURCE", to: "2", .when(configuration: .release))]
        ),
        // libsystemd's sd-daemon header (libsystemd-dev). Deliberately without `pkgConfig: "libsystemd"`, whose
        // `-lsystemd` would make every process load libsystemd and the six libraries it needs (+0.6 ms measured per
        // start): CLinux loads it with dlopen only when systemd started the process. `make deps` checks for it with
        // `pkg-config --exists libsystemd` and installs libsystemd-dev when it is missing.
        .systemLibrary(
            name: "CSystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        // Everything that can be tested: addresses, the relay, the event loop, activation, logging, daemon set-up.
        .target(
            name: "TCPCrossover",
            dependencies: ["CLinux"],
            // Dynamic exclusivity checks cost about a fifth of the relay's instructions per connection (measured
            // with callgrind). Debug builds, which the tests run, keep them.
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        // The thin command: options in, configuration out, core started.
        .executableTarget(
            name: "tcp-crossover",
            dependencies: [
                "TCPCrossover",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // What both test targets use: a seeded random generator.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(
            name: "TCPCrossoverTests",
            dependencies: ["TCPCrossover", "TestSupport"]
        ),
        // An echo server that holds thousands of connections, in a process of its own (the reliability tests).
        .executableTarget(name: "tcx-test-echo", path: "Tests/EchoServer"),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["tcp-crossover", "tcx-test-echo", "TestSupport"]
        ),
    ]
)
