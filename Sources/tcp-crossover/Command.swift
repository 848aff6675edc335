import ArgumentParser
import Glibc
import TCPCrossover

/// The command line: options in, a `Configuration` out, the core started. All checks that can be made without
/// touching the system are made in `validate()`, so bad input gets one line and status 64 before anything starts.
@main
struct TCPCrossoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcp-crossover",
        abstract: "Relay TCP connections between IPv4 and IPv6.",
        discussion: """
            Makes a server that speaks only IPv4 reachable over IPv6, or the other way round, by relaying every \
            connection it receives to --remote. It listens on the --local addresses itself (standalone), or takes \
            the sockets systemd or inetd pass to it.

            Addresses: \(Endpoint.accepted). A host name resolves to every address it has.

            Examples:
              tcp-crossover --local [::]:80 --remote 127.0.0.1:80 --pidfile=/var/run/tcp-cross-http.pid
              tcp-crossover --local [::]:25 --remote [2804:aabb:beba:cafe::ccdd]:25 --foreground
            """,
        version: tcpCrossoverVersion
    )

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Address to listen on; repeatable. IPv6 addresses accept IPv6 only unless --dual-stack.",
            valueName: "address:port"))
    var local: [String] = []

    @Option(name: .long, help: ArgumentHelp("Address to relay every connection to.", valueName: "address:port"))
    var remote: String

    @Option(name: .long, help: ArgumentHelp("Record the pid in this file, locked while running.", valueName: "file"))
    var pidfile: String?

    @Option(
        name: .customLong("bs"),
        help: ArgumentHelp(
            "Buffer (pipe) size per direction of a connection, 4096 to 16777216; k and m suffixes accepted.",
            valueName: "bytes"))
    var bufferSize: String = "1m"

    @Flag(name: .long, help: "Stay in the foreground and log every event to standard error.")
    var debug = false

    @Flag(name: [.short, .long], help: "Stay in the foreground and log to standard error.")
    var foreground = false

    @Flag(name: .long, help: "IPv6 listeners also accept IPv4 clients (as IPv4-mapped addresses).")
    var dualStack = false

    @Option(name: .long, help: ArgumentHelp("Time allowed to connect to the remote.", valueName: "seconds"))
    var connectTimeout: String = "10"

    @Option(name: .long, help: ArgumentHelp("Event loop threads; 0 means one per CPU.", valueName: "count"))
    var threads: Int = 0

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Exit after this long without a connection (socket activation starts it again).",
            valueName: "seconds"))
    var exitIdleTime: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Connections relayed at once; more wait in the listen backlog. Default: from the descriptor limit.",
            valueName: "count"))
    var maxConnections: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Close a connection after this long with no bytes either way (default: never).",
            valueName: "seconds"))
    var idleTimeout: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "TCP keepalive on both sockets: idle seconds before probes, seconds between them, probes before the "
                + "connection is dropped; or 'off'.",
            valueName: "idle[,interval,count]"))
    var keepalive: String = "120,30,4"

    @Option(
        name: .long,
        help: ArgumentHelp("On SIGTERM, time open connections get to finish.", valueName: "seconds"))
    var shutdownTimeout: String = "10"

    @Option(
        name: .long,
        help: ArgumentHelp("Run as this user once the sockets are bound (its groups too).", valueName: "name"))
    var user: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Run with this group once the sockets are bound (default: the user's).", valueName: "name"))
    var group: String?

    func validate() throws {
        _ = try makeConfiguration()
    }

    func run() throws {
        let status = Launcher.run(try makeConfiguration())
        if status != ExitStatus.success { throw ExitCode(status) }
    }

    /// The options as a configuration; throws a `ValidationError` naming the bad value and what is accepted.
    private func makeConfiguration() throws -> Configuration {
        let remote = try endpoint(remote, option: "--remote", portZero: .refused)
        var configuration = Configuration(remote: remote)
        configuration.locals = try local.map { try endpoint($0, option: "--local", portZero: .allowed) }
        configuration.pidfile = try pidfile.map { path in
            guard !path.isEmpty else { throw ValidationError("--pidfile needs a file name") }
            return path
        }
        configuration.foreground = foreground
        configuration.debug = debug
        configuration.dualStack = dualStack
        configuration.relay.pipeSize = try size(bufferSize, option: "--bs", range: 4096...(16 << 20))
        configuration.relay.connectTimeout = try milliseconds(connectTimeout, option: "--connect-timeout")
        guard (0...1024).contains(threads) else {
            throw ValidationError("--threads \(threads) is out of range; expected 0 (one per CPU) to 1024")
        }
        configuration.relay.threads = threads
        configuration.exitIdleTime = try exitIdleTime.map { try milliseconds($0, option: "--exit-idle-time") }
        if let maxConnections {
            guard (1...10_000_000).contains(maxConnections) else {
                throw ValidationError("--max-connections \(maxConnections) is out of range; expected 1 to 10000000")
            }
            configuration.maximumConnections = maxConnections
        }
        configuration.relay.idleTimeout = try idleTimeout.map { try milliseconds($0, option: "--idle-timeout") }
        configuration.relay.keepalive = try parseKeepalive(keepalive)
        configuration.relay.shutdownTimeout = try milliseconds(
            shutdownTimeout, option: "--shutdown-timeout", zero: true)
        for (option, name) in [("--user", user), ("--group", group)] {
            if let name, name.isEmpty || name.utf8.contains(where: { $0 < 0x21 || $0 == 0x3a }) {
                throw ValidationError("\(option) '\(name)' is not a user or group name")
            }
        }
        configuration.user = user
        configuration.group = group
        return configuration
    }

    /// Parses and runs; every error is one line on standard error, with argument-parser's exit status (64 for a
    /// bad command line).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            let status = exitCode(for: error)
            if status == .success {
                print(fullMessage(for: error))
            } else {
                let message = message(for: error).split(whereSeparator: \.isNewline).joined(separator: " ")
                Log.console("\(message) (see --help)")
            }
            Glibc.exit(status.rawValue)
        }
    }
}

private func endpoint(_ text: String, option: String, portZero: Endpoint.PortZero) throws -> Endpoint {
    do {
        return try Endpoint(parsing: text, portZero: portZero)
    } catch {
        throw ValidationError("\(option): \(error)")
    }
}

/// A size in bytes: `65536`, `64k`, `1m`.
private func size(_ text: String, option: String, range: ClosedRange<Int>) throws -> Int {
    var digits = Substring(text)
    var multiplier = 1
    switch digits.last {
    case "k", "K":
        multiplier = 1 << 10
        digits = digits.dropLast()
    case "m", "M":
        multiplier = 1 << 20
        digits = digits.dropLast()
    default:
        break
    }
    guard let value = Int(digits), value > 0, value <= range.upperBound / multiplier,
        range.contains(value * multiplier)
    else {
        throw ValidationError(
            "\(option) '\(text)' is not a size from \(range.lowerBound) to \(range.upperBound) bytes (such as 65536, 64k or 1m)"
        )
    }
    return value * multiplier
}

/// Seconds, possibly with a fraction, as milliseconds: `10`, `2.5`.
private func milliseconds(_ text: String, option: String, zero: Bool = false) throws -> Int64 {
    let lowest = zero ? "0" : "0.001"
    guard let seconds = Double(text), seconds.isFinite, zero ? seconds >= 0 : seconds > 0, seconds <= 86_400 else {
        throw ValidationError("\(option) '\(text)' is not a number of seconds from \(lowest) to 86400")
    }
    return zero && seconds == 0 ? 0 : max(1, Int64((seconds * 1000).rounded()))
}

/// `off`, `IDLE`, or `IDLE,INTERVAL,COUNT` (whole seconds; the interval defaults to a quarter of the idle time).
private func parseKeepalive(_ text: String) throws -> Keepalive? {
    if text == "off" { return nil }
    let fields = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0) }
    let bad = ValidationError(
        "--keepalive '\(text)' is not valid; expected 'off', IDLE or IDLE,INTERVAL,COUNT in whole seconds (such as 120,30,4)"
    )
    guard fields.count == 1 || fields.count == 3, fields.allSatisfy({ $0 != nil }) else { throw bad }
    let idle = fields[0]!
    let interval = fields.count == 3 ? fields[1]! : max(1, idle / 4)
    let count = fields.count == 3 ? fields[2]! : 4
    // The kernel's bounds: TCP_KEEPIDLE and TCP_KEEPINTVL 1 to 32767, TCP_KEEPCNT 1 to 127.
    guard (1...32767).contains(idle), (1...32767).contains(interval), (1...127).contains(count) else { throw bad }
    return Keepalive(idle: idle, interval: interval, count: count)
}
