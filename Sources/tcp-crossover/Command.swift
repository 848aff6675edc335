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

    @Option(name: .table(.local), help: .table(.local))
    var local: [String] = []

    @Option(name: .table(.remote), help: .table(.remote))
    var remote: [String] = []

    @Option(name: .table(.pidfile), help: .table(.pidfile))
    var pidfile: String?

    @Option(name: .table(.bufferSize), help: .table(.bufferSize))
    var bufferSize: String = Options.defaults.bufferSize

    @Option(name: .table(.pipeMemory), help: .table(.pipeMemory))
    var pipeMemory: String?

    @Flag(name: .table(.debug), help: .table(.debug))
    var debug = false

    @Flag(name: .table(.foreground), help: .table(.foreground))
    var foreground = false

    @Flag(name: .table(.dualStack), help: .table(.dualStack))
    var dualStack = false

    @Option(name: .table(.connectTimeout), help: .table(.connectTimeout))
    var connectTimeout: [String] = []

    @Option(name: .table(.connectDeadline), help: .table(.connectDeadline))
    var connectDeadline: [String] = []

    @Option(name: .table(.threads), help: .table(.threads))
    var threads: String = Options.defaults.threads

    @Option(name: .table(.exitIdleTime), help: .table(.exitIdleTime))
    var exitIdleTime: String?

    @Option(name: .table(.maxConnections), help: .table(.maxConnections))
    var maxConnections: String?

    @Option(name: .table(.maxConnectionsPerClient), help: .table(.maxConnectionsPerClient))
    var maxConnectionsPerClient: [String] = []

    @Option(name: .table(.maxNewConnectionsPerClient), help: .table(.maxNewConnectionsPerClient))
    var maxNewConnectionsPerClient: [String] = []

    @Option(name: .table(.clientPrefixLength), help: .table(.clientPrefixLength))
    var clientPrefixLength: [String] = []

    @Option(name: .table(.idleTimeout), help: .table(.idleTimeout))
    var idleTimeout: [String] = []

    @Option(name: .table(.keepalive), help: .table(.keepalive))
    var keepalive: [String] = []

    @Option(name: .table(.shutdownTimeout), help: .table(.shutdownTimeout))
    var shutdownTimeout: String = Options.defaults.shutdownTimeout

    @Option(name: .table(.user), help: .table(.user))
    var user: String?

    @Option(name: .table(.group), help: .table(.group))
    var group: String?

    @Option(name: .table(.proxyProtocol), help: .table(.proxyProtocol))
    var proxyProtocol: [String] = []

    @Option(name: .table(.source), help: .table(.source))
    var source: [String] = []

    @Option(name: .table(.allow), help: .table(.allow))
    var allow: [String] = []

    @Option(name: .table(.deny), help: .table(.deny))
    var deny: [String] = []

    @Option(name: .table(.resolveInterval), help: .table(.resolveInterval))
    var resolveInterval: String = Options.defaults.resolveInterval

    @Option(name: .table(.loopbackCongestionControl), help: .table(.loopbackCongestionControl))
    var loopbackCongestionControl: String = Options.defaults.loopbackCongestionControl

    @Option(name: .table(.loopbackMSS), help: .table(.loopbackMSS))
    var loopbackMSS: String = Options.defaults.loopbackMSS

    @Flag(name: .table(.noProxyWarning), help: .table(.noProxyWarning))
    var noProxyWarning = false

    @Option(name: .table(.metrics), help: .table(.metrics))
    var metrics: String?

    @Option(name: .table(.logConnections), help: .table(.logConnections))
    var logConnections: [String] = []

    @Option(name: .table(.splice), help: .table(.splice))
    var splice: [String] = []

    // Names and help come from `optionTable`; QuickCommandLineTests checks that each wrapper's kind (value, repeated
    // value, flag) is the table's.

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
            loopbackCongestionControl: loopbackCongestionControl, loopbackMSS: loopbackMSS,
            noProxyWarning: noProxyWarning, metrics: metrics,
            logConnections: logConnections, splice: splice)
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

extension NameSpecification {
    /// The names `optionTable` gives the option.
    static func table(_ key: OptionKey) -> NameSpecification {
        let option = OptionDescription.of(key)
        let long = NameSpecification.Element.customLong("\(option.name)")
        guard option.shortName.utf8CodeUnitCount > 0 else { return [long] }
        return [long, .customShort(Character("\(option.shortName)"))]
    }
}

extension ArgumentHelp {
    /// The help line and value name `optionTable` gives the option.
    static func table(_ key: OptionKey) -> ArgumentHelp {
        let option = OptionDescription.of(key)
        let valueName = option.valueName.utf8CodeUnitCount > 0 ? "\(option.valueName)" : nil
        return ArgumentHelp("\(option.help)", valueName: valueName)
    }
}
