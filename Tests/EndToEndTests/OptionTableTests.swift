import ArgumentParser
import Foundation
import TCPCrossover
import Testing

@testable import tcp_crossover

/// Every option of `optionTable` does what it says: a non-default value reaches its `Configuration` field, through
/// both readers of the command line, and a bad value gets one line and status 64 from the real binary. The cases
/// are chosen by a switch over `OptionKey`, so a new option does not compile here until it has its case.
@Suite struct OptionTableTests {
    /// What one option is checked with.
    struct Behaviour {
        /// The option with a value other than its default (or the flag).
        var arguments: [String]
        /// What those arguments change in the configuration of `--remote 127.0.0.1:1` alone.
        var change: @Sendable (inout Configuration) -> Void
        /// A line that must be refused: `--remote 127.0.0.1:1` plus these.
        var invalid: [String]
    }

    static func behaviour(_ key: OptionKey) -> Behaviour {
        switch key {
        case .local:
            return Behaviour(
                arguments: ["--local", "smtp=[::1]:25", "--local", "127.0.0.1:0"],
                change: {
                    $0.locals = [
                        try! NamedEndpoint(parsing: "smtp=[::1]:25"),
                        try! NamedEndpoint(parsing: "127.0.0.1:0", portZero: .allowed),
                    ]
                },
                invalid: ["--local", "::1:80"])
        case .remote:
            return Behaviour(
                arguments: ["--remote", "smtp=[::1]:2"],
                change: { $0.remotes.append(try! NamedEndpoint(parsing: "smtp=[::1]:2")) },
                invalid: ["--remote", "127.0.0.1:0"])
        case .pidfile:
            return Behaviour(
                arguments: ["--pidfile", "/run/x.pid"], change: { $0.pidfile = "/run/x.pid" },
                invalid: ["--pidfile", ""])
        case .bufferSize:
            return Behaviour(
                arguments: ["--bs", "64k"], change: { $0.relay.pipeSize = 65536 }, invalid: ["--bs", "3k"])
        case .pipeMemory:
            return Behaviour(
                arguments: ["--pipe-memory", "16m"], change: { $0.relay.pipeMemory = 16 << 20 },
                invalid: ["--pipe-memory", "1"])
        case .connectTimeout:
            return Behaviour(
                arguments: ["--connect-timeout", "2.5"], change: { $0.relay.service.connectTimeout = 2500 },
                invalid: ["--connect-timeout", "0"])
        case .connectDeadline:
            return Behaviour(
                arguments: ["--connect-deadline", "7"], change: { $0.relay.service.connectDeadline = 7000 },
                invalid: ["--connect-deadline", "soon"])
        case .threads:
            return Behaviour(
                arguments: ["--threads", "3"], change: { $0.relay.threads = 3 }, invalid: ["--threads", "1025"])
        case .exitIdleTime:
            return Behaviour(
                arguments: ["--exit-idle-time", "30"], change: { $0.exitIdleTime = 30_000 },
                invalid: ["--exit-idle-time", "86401"])
        case .maxConnections:
            return Behaviour(
                arguments: ["--max-connections", "100"], change: { $0.maximumConnections = 100 },
                invalid: ["--max-connections", "0"])
        case .maxConnectionsPerClient:
            return Behaviour(
                arguments: ["--max-connections-per-client", "20"],
                change: { $0.relay.service.maximumConnectionsPerClient = 20 },
                invalid: ["--max-connections-per-client", "many"])
        case .maxNewConnectionsPerClient:
            return Behaviour(
                arguments: ["--max-new-connections-per-client", "30/60"],
                change: { $0.relay.service.newConnectionRatePerClient = ConnectionRate(count: 30, period: 60_000) },
                invalid: ["--max-new-connections-per-client", "0/60"])
        case .clientPrefixLength:
            return Behaviour(
                arguments: ["--max-connections-per-client", "5", "--client-prefix-length", "24,56"],
                change: {
                    $0.relay.service.maximumConnectionsPerClient = 5
                    $0.relay.service.clientPrefixes = ClientPrefixes(ipv4: 24, ipv6: 56)!
                },
                invalid: ["--max-connections-per-client", "5", "--client-prefix-length", "33,64"])
        case .idleTimeout:
            return Behaviour(
                arguments: ["--idle-timeout", "600"], change: { $0.relay.service.idleTimeout = 600_000 },
                invalid: ["--idle-timeout", "0"])
        case .keepalive:
            return Behaviour(
                arguments: ["--keepalive", "60,10,5"],
                change: { $0.relay.service.keepalive = Keepalive(idle: 60, interval: 10, count: 5) },
                invalid: ["--keepalive", "60,10"])
        case .shutdownTimeout:
            return Behaviour(
                arguments: ["--shutdown-timeout", "0"], change: { $0.relay.shutdownTimeout = 0 },
                invalid: ["--shutdown-timeout", "86401"])
        case .user:
            return Behaviour(
                arguments: ["--user", "nobody"], change: { $0.user = "nobody" }, invalid: ["--user", "no body"])
        case .group:
            return Behaviour(
                arguments: ["--group", "nogroup"], change: { $0.group = "nogroup" }, invalid: ["--group", "a:b"])
        case .proxyProtocol:
            return Behaviour(
                arguments: ["--proxy-protocol", "v2"], change: { $0.relay.service.proxyProtocol = .v2 },
                invalid: ["--proxy-protocol", "v3"])
        case .source:
            return Behaviour(
                arguments: ["--source", "127.0.0.1", "--source", "::1"],
                change: {
                    $0.relay.service.sources = [
                        SocketAddress(numericHost: "127.0.0.1")!, SocketAddress(numericHost: "::1")!,
                    ]
                },
                invalid: ["--source", "127.0.0.1:25"])
        case .allow:
            return Behaviour(
                arguments: ["--allow", "192.0.2.0/24", "--allow", "2001:db8::/32"],
                change: {
                    $0.relay.service.access = AccessRules(
                        allow: [
                            try! AddressRange(parsing: "192.0.2.0/24"), try! AddressRange(parsing: "2001:db8::/32"),
                        ],
                        deny: [])
                },
                invalid: ["--allow", "192.0.2.0/33"])
        case .deny:
            return Behaviour(
                arguments: ["--deny", "192.0.2.0/24"],
                change: {
                    $0.relay.service.access = AccessRules(allow: [], deny: [try! AddressRange(parsing: "192.0.2.0/24")])
                },
                invalid: ["--deny", "nowhere"])
        case .resolveInterval:
            return Behaviour(
                arguments: ["--resolve-interval", "0"], change: { $0.relay.resolveInterval = 0 },
                invalid: ["--resolve-interval", "often"])
        case .loopbackCongestionControl:
            return Behaviour(
                arguments: ["--loopback-congestion-control", "system"],
                change: { $0.relay.loopbackCongestionControl = nil },
                invalid: ["--loopback-congestion-control", "no such"])
        case .loopbackMSS:
            return Behaviour(
                arguments: ["--loopback-mss", "system"], change: { $0.relay.loopbackMSS = .system },
                invalid: ["--loopback-mss", "535"])
        case .noProxyWarning:
            return Behaviour(
                arguments: ["--no-proxy-warning"], change: { $0.localRemoteWarning = false },
                invalid: ["--no-proxy-warning=yes"])
        case .metrics:
            return Behaviour(
                arguments: ["--metrics", "[::1]:9100"], change: { $0.metrics = try! Endpoint(parsing: "[::1]:9100") },
                invalid: ["--metrics", "[::1]"])
        case .logConnections:
            return Behaviour(
                arguments: ["--log-connections", "no"], change: { $0.relay.service.logConnections = false },
                invalid: ["--log-connections", "maybe"])
        case .splice:
            return Behaviour(
                arguments: ["--splice", "no"], change: { $0.relay.service.splice = false },
                invalid: ["--splice", "sometimes"])
        case .dualStack:
            return Behaviour(
                arguments: ["--dual-stack"], change: { $0.dualStack = true }, invalid: ["--dual-stack=yes"])
        case .foreground:
            return Behaviour(arguments: ["-f"], change: { $0.foreground = true }, invalid: ["--foreground=no"])
        case .debug:
            return Behaviour(arguments: ["--debug"], change: { $0.debug = true }, invalid: ["--debug=yes"])
        }
    }

    static let base = ["--remote", "127.0.0.1:1"]

    /// A non-default value changes the configuration, as the table's entry says, through both readers.
    @Test(arguments: optionTable.map(\.key))
    func option_withNonDefaultValue_changesItsConfigurationField(key: OptionKey) throws {
        let behaviour = Self.behaviour(key)
        let arguments = Self.base + behaviour.arguments
        let standard = try Options(remote: ["127.0.0.1:1"]).configuration()
        var expected = standard
        behaviour.change(&expected)
        #expect(expected != standard, "the case for \(key) changes nothing")

        let quick = try #require(QuickCommandLine.parse(arguments), "\(arguments)")
        #expect(try quick.configuration() == expected)
        let full = try TCPCrossoverCommand.parse(arguments).options
        #expect(try full.configuration() == expected)
    }

    /// A bad value is one line on standard error, naming the option, and exit status 64; nothing starts.
    @Test(arguments: optionTable.map(\.key))
    func option_withInvalidValue_getsOneLineAndStatus64(key: OptionKey) throws {
        let option = OptionDescription.of(key)
        let invalid = Self.behaviour(key).invalid
        let process = try ChildProcess(relayBinary, Self.base + invalid)
        #expect(process.waitForExit(timeout: 20) == 64, "\(invalid): \(process.standardError)")
        let lines = process.standardError.split(separator: "\n")
        #expect(lines.count == 1, "\(invalid): \(process.standardError)")
        #expect(process.standardError.contains("--\(option.name)"), "\(invalid): \(process.standardError)")
        #expect(process.standardOutput.isEmpty)
    }
}

extension OptionKey: CustomTestStringConvertible {
    public var testDescription: String { "--\(OptionDescription.of(self).name)" }
}
