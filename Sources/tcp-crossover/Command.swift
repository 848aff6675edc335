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
            "Address to listen on; repeatable. IPv6 addresses accept IPv6 only unless --dual-stack. A name "
                + "before '=' ties it to the --remote of that name.",
            valueName: "[name=]address:port"))
    var local: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Address to relay connections to; repeat for failover, in order. A name before '=' serves the "
                + "--local (or systemd socket, FileDescriptorName=) of that name; an unnamed one serves the rest.",
            valueName: "[name=]address:port"))
    var remote: [String] = []

    @Option(name: .long, help: ArgumentHelp("Record the pid in this file, locked while running.", valueName: "file"))
    var pidfile: String?

    @Option(
        name: .customLong("bs"),
        help: ArgumentHelp(
            "Largest pipe per direction of a connection, 4096 to 16777216; k and m suffixes accepted. A pipe starts "
                + "at 16 KiB and grows while the connection's data flows.",
            valueName: "bytes"))
    var bufferSize: String = Options.defaults.bufferSize

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Pipe memory all connections together may hold beyond their pipes' 16 KiB start; 0 keeps every pipe at "
                + "its start. Default: 64 times --bs, unprivileged at most half of fs.pipe-user-pages-soft.",
            valueName: "bytes"))
    var pipeMemory: String?

    @Flag(name: .long, help: "Stay in the foreground and log every event to standard error.")
    var debug = false

    @Flag(name: [.short, .long], help: "Stay in the foreground and log to standard error.")
    var foreground = false

    @Flag(name: .long, help: "IPv6 listeners also accept IPv4 clients (as IPv4-mapped addresses).")
    var dualStack = false

    @Option(
        name: .long, help: ArgumentHelp("Time allowed for each connect to a remote address.", valueName: "seconds"))
    var connectTimeout: String = Options.defaults.connectTimeout

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Time allowed to reach a remote, all addresses and failover included.", valueName: "seconds"))
    var connectDeadline: String = Options.defaults.connectDeadline

    @Option(name: .long, help: ArgumentHelp("Event loop threads; 0 means one per CPU.", valueName: "count"))
    var threads: String = Options.defaults.threads

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
    var maxConnections: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Connections one client (an address block, see --client-prefix-length) may have open at once; more are "
                + "reset before any connection to the remote. Default: no such limit.",
            valueName: "count"))
    var maxConnectionsPerClient: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "New connections one client may open: COUNT at once, then COUNT per SECONDS (a token bucket); more are "
                + "reset before any connection to the remote. Default: no such limit.",
            valueName: "count/seconds"))
    var maxNewConnectionsPerClient: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The address block that counts as one client for the per-client limits: IPv4 and IPv6 prefix "
                + "lengths (default 32,64). IPv4 clients of a dual-stack listener count as IPv4.",
            valueName: "ipv4,ipv6"))
    var clientPrefixLength: String?

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
    var keepalive: String = Options.defaults.keepalive

    @Option(
        name: .long,
        help: ArgumentHelp("On SIGTERM, time open connections get to finish.", valueName: "seconds"))
    var shutdownTimeout: String = Options.defaults.shutdownTimeout

    @Option(
        name: .long,
        help: ArgumentHelp("Run as this user once the sockets are bound (its groups too).", valueName: "name"))
    var user: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Run with this group once the sockets are bound (default: the user's).", valueName: "name"))
    var group: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Send the remote a PROXY protocol header (v1 text, v2 binary) with the client's address first.",
            valueName: "version"))
    var proxyProtocol: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Connect to the remote from this address; one IPv4 and one IPv6 address at most.", valueName: "address"))
    var source: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp("Serve only clients in this block; repeatable.", valueName: "address/prefix"))
    var allow: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp("Refuse clients in this block; repeatable; wins over --allow.", valueName: "address/prefix"))
    var deny: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp("Look remote host names up again this often; 0 never.", valueName: "seconds"))
    var resolveInterval: String = Options.defaults.resolveInterval

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Congestion control of the sockets to peers on this machine (loopback or its own address): a kernel "
                + "algorithm, or 'system' for the system's default.",
            valueName: "algorithm"))
    var loopbackCongestionControl: String = Options.defaults.loopbackCongestionControl

    @Flag(
        name: .long,
        help: "No warning at start when relaying to an address of this machine without --proxy-protocol.")
    var noProxyWarning = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://ADDRESS:PORT/metrics (never on a relayed port). Under systemd, a "
                + "passed socket with FileDescriptorName=metrics does the same.",
            valueName: "address:port"))
    var metrics: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Log a line for every finished connection ('no' for very busy relays; the figures are counted "
                + "either way).",
            valueName: "yes|no"))
    var logConnections: String = Options.defaults.logConnections

    /// The parsed options, as the quick parser gives them too.
    var options: Options {
        Options(
            local: local, remote: remote, pidfile: pidfile, bufferSize: bufferSize, pipeMemory: pipeMemory,
            debug: debug, foreground: foreground, dualStack: dualStack, connectTimeout: connectTimeout,
            connectDeadline: connectDeadline, threads: threads, exitIdleTime: exitIdleTime,
            maxConnections: maxConnections, maxConnectionsPerClient: maxConnectionsPerClient,
            maxNewConnectionsPerClient: maxNewConnectionsPerClient, clientPrefixLength: clientPrefixLength,
            idleTimeout: idleTimeout,
            keepalive: keepalive, shutdownTimeout: shutdownTimeout, user: user, group: group,
            proxyProtocol: proxyProtocol, source: source, allow: allow, deny: deny, resolveInterval: resolveInterval,
            loopbackCongestionControl: loopbackCongestionControl, noProxyWarning: noProxyWarning, metrics: metrics,
            logConnections: logConnections)
    }

    func validate() throws {
        _ = try configuration()
    }

    func run() throws {
        let status = Launcher.run(try configuration())
        if status != ExitStatus.success { throw ExitCode(status) }
    }

    /// The options as a configuration; a bad value becomes swift-argument-parser's validation error (status 64).
    private func configuration() throws -> Configuration {
        do {
            return try options.configuration()
        } catch let error as OptionError {
            throw ValidationError(error.description)
        }
    }

    /// Parses and runs; every error is one line on standard error, with argument-parser's exit status (64 for a
    /// bad command line).
    ///
    /// A valid command line of options with values and flags is read by `QuickCommandLine` first: that path skips
    /// swift-argument-parser's reflection, which takes about four fifths of the instructions of a whole start
    /// (measured with callgrind), and inetd starts a process per connection. Anything else (help, version,
    /// completion scripts, a mistake) goes to swift-argument-parser, for its messages.
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments == ["--version"] {
            print(tcpCrossoverVersion)
            Glibc.exit(0)
        }
        if let options = QuickCommandLine.parse(arguments), let configuration = try? options.configuration() {
            Glibc.exit(Launcher.run(configuration))
        }
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
