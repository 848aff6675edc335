// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "tcp-crossover",
    products: [
        .executable(name: "tcp-crossover", targets: ["tcp-crossover"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
    ],
    targets: [
        // The Linux calls that Swift's Glibc module does not expose (epoll, splice, pipe2, accept4, F_SETPIPE_SZ,
        // signalfd, eventfd, syslog). `_GNU_SOURCE` is defined inside shim.c only: passed to Swift it would change
        // the signatures of bind/accept.
        .target(name: "CLinux"),
        // libsystemd's sd-daemon API (sd_listen_fds_with_names, sd_notify), found by pkg-config.
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        // Everything that can be tested: addresses, the relay, the event loop, activation, logging, daemon set-up.
        .target(
            name: "TCPCrossover",
            dependencies: ["CLinux", "CSystemd"]
        ),
        // The thin command: options in, configuration out, core started.
        .executableTarget(
            name: "tcp-crossover",
            dependencies: [
                "TCPCrossover",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "TCPCrossoverTests",
            dependencies: ["TCPCrossover"]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["tcp-crossover"]
        ),
    ]
)
