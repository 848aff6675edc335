import Glibc

/// Starts tcp-crossover from a configuration: finds how it was started, resolves, binds or adopts the inherited
/// sockets, detaches when standalone, runs the engine, cleans up.
public enum Launcher {
    /// Runs until the relay stops; returns the exit status. Failures at start are reported in one line: on
    /// standard error when that is safe, to syslog when standard error may be the client's connection (inetd).
    public static func run(_ configuration: Configuration) -> CInt {
        Engine.prepareProcess()
        let level: LogLevel = configuration.debug ? .debug : .info
        let standardInput = Syscall.describe(STDIN_FILENO)
        let journal = Self.standardErrorIsJournal()
        Log.configure(target: initialLogTarget(standardInput: standardInput, journal: journal), level: level)
        do throws(StartupError) {
            let mode = try detectMode(configuration, standardInput: standardInput)
            let identity = try Identity.lookUp(user: configuration.user, group: configuration.group)
            var configuration = configuration
            configuration.relay = limits(configuration, mode: mode)
            switch mode {
            case .standalone:
                try runStandalone(configuration, identity: identity, level: level, journal: journal)
            case .systemdListeners(let descriptors):
                try runActivated(configuration, identity, listeners: descriptors.map(\.fd), connection: nil)
            case .systemdConnection(let descriptor):
                try runActivated(configuration, identity, listeners: [], connection: descriptor.fd)
            case .inetdListener:
                try detachStandardOutput(keepError: journal)
                try runActivated(configuration, identity, listeners: [STDIN_FILENO], connection: nil)
            case .inetdConnection:
                try detachStandardOutput(keepError: journal)
                try runActivated(configuration, identity, listeners: [], connection: STDIN_FILENO)
            }
            return ExitStatus.success
        } catch {
            if Log.currentTarget == .standardError {
                Log.console(error.message)
            } else {
                Log.error(error.message)
            }
            return error.status
        }
    }

    /// The thread count and connection limit in force: the descriptor limit is raised to its hard limit, and the
    /// connection limit, unless given, follows from it.
    private static func limits(_ configuration: Configuration, mode: StartMode) -> RelayOptions {
        var relay = configuration.relay
        switch mode {
        case .systemdConnection, .inetdConnection:
            relay.threads = 1
        case .standalone, .systemdListeners, .inetdListener:
            if relay.threads == 0 { relay.threads = Syscall.onlineProcessors }
        }
        let descriptors = DescriptorBudget.raiseLimit()
        relay.maximumConnections =
            configuration.maximumConnections
            ?? DescriptorBudget.maximumConnections(descriptorLimit: descriptors, threads: relay.threads)
        return relay
    }

    /// Where messages go before the mode is known: never standard error when standard input is a TCP socket
    /// (inetd passes the connection as standard input, output and error).
    private static func initialLogTarget(standardInput: DescriptorKind, journal: Bool) -> LogTarget {
        if journal { return .journal }
        if case .socket(let family, _, _) = standardInput, family == .ipv4 || family == .ipv6 { return .syslog }
        return .standardError
    }

    /// Whether standard error is connected to the journal: $JOURNAL_STREAM holds its device and inode.
    static func standardErrorIsJournal() -> Bool {
        guard let value = Syscall.environment("JOURNAL_STREAM"), let identity = Syscall.identity(STDERR_FILENO)
        else { return false }
        return value == "\(identity.device):\(identity.inode)"
    }

    private static func detectMode(_ configuration: Configuration, standardInput: DescriptorKind)
        throws(StartupError) -> StartMode
    {
        let passed: [(fd: CInt, name: String?)]
        switch Systemd.listenDescriptors() {
        case .success(let descriptors): passed = descriptors
        case .failure(let error): throw error
        }
        let inherited = passed.map { InheritedDescriptor(fd: $0.fd, name: $0.name, kind: Syscall.describe($0.fd)) }
        for descriptor in inherited where descriptor.fd >= 0 { try? Syscall.setCloseOnExec(descriptor.fd) }
        switch StartMode.decide(
            systemd: inherited, standardInput: inherited.isEmpty ? standardInput : .notSocket,
            hasLocal: !configuration.locals.isEmpty)
        {
        case .success(let mode): return mode
        case .failure(let error): throw error
        }
    }

    /// Under inetd, standard output and error are the client's connection: point them at /dev/null, so that
    /// nothing but relayed bytes can ever reach the client, and the connection has one descriptor, which the relay
    /// closes.
    private static func detachStandardOutput(keepError: Bool) throws(StartupError) {
        do {
            let null = try Syscall.open("/dev/null", O_WRONLY)
            try Syscall.duplicate(null, onto: STDOUT_FILENO)
            if !keepError { try Syscall.duplicate(null, onto: STDERR_FILENO) }
            if null > STDERR_FILENO { Syscall.close(null) }
        } catch {
            throw StartupError(ExitStatus.systemError, "cannot open /dev/null: \(error)")
        }
    }

    // MARK: socket activation and inetd

    private static func runActivated(
        _ configuration: Configuration,
        _ identity: Identity?,
        listeners fds: [CInt],
        connection: CInt?
    ) throws(StartupError) {
        let service = try resolve(configuration.remote)
        var listeners: [ListeningSocket] = []
        for fd in fds {
            do {
                try Syscall.setNonBlocking(fd)
                try Syscall.setConnectionOptions(fd, keepalive: configuration.relay.keepalive)
                listeners.append(ListeningSocket(fd: fd, address: try Syscall.localAddress(fd), service: 0))
            } catch {
                throw StartupError(
                    ExitStatus.systemError, "the socket passed as descriptor \(fd) is unusable: \(error)")
            }
        }
        try identity?.assume()
        let engine = Engine(services: [service], options: configuration.relay)
        let notifier = ServiceNotifier(
            engine: engine, exitIdleTime: listeners.isEmpty ? nil : configuration.exitIdleTime)
        let accepted = connection.map { [AcceptedConnection(fd: $0, service: 0)] } ?? []
        let startLine =
            listeners.isEmpty
            ? nil
            : "tcp-crossover \(tcpCrossoverVersion) serving "
                + listeners.map(\.address.description).joined(separator: ", ")
                + ", relaying to \(describe(service))"
        do {
            try engine.run(listeners: listeners, connections: accepted) {
                if let startLine { Log.notice(startLine) }
                notifier.ready()
            }
        } catch {
            throw StartupError(ExitStatus.systemError, error.description)
        }
        if !listeners.isEmpty { Log.notice("stopped: \(engine.statistics.snapshot())") }
    }

    // MARK: standalone

    private static func runStandalone(
        _ configuration: Configuration,
        identity: Identity?,
        level: LogLevel,
        journal: Bool
    ) throws(StartupError) {
        let service = try resolve(configuration.remote)
        var pidfile: Pidfile? = nil
        if let path = configuration.pidfile { pidfile = try Pidfile(path: path) }
        var listeners: [ListeningSocket] = []
        // Until the engine takes them.
        var ownsListeners = true
        defer { if ownsListeners { for listener in listeners { Syscall.close(listener.fd) } } }
        for local in configuration.locals {
            let addresses: [SocketAddress]
            switch local.resolve() {
            case .success(let resolved): addresses = resolved
            case .failure(let error): throw StartupError(ExitStatus.noHost, "\(error) (in --local \(local))")
            }
            for address in addresses {
                let (fd, bound) = try Listener.open(
                    address, dualStack: configuration.dualStack, keepalive: configuration.relay.keepalive)
                listeners.append(ListeningSocket(fd: fd, address: bound, service: 0))
            }
        }

        let background = !configuration.foreground && !configuration.debug
        var readiness: Daemon.Readiness? = nil
        if background {
            readiness = try Daemon.detach()
            Log.configure(target: .syslog, level: level)
        } else if journal {
            Log.configure(target: .journal, level: level)
        }
        do throws(StartupError) {
            if let identity {
                if let kept = pidfile.take() {
                    let closing = listeners.map(\.fd) + [readiness?.fd].compactMap { $0 }
                    try Daemon.keepPidfile(kept, closing: closing)
                }
                try identity.assume()
            }
            try pidfile?.record(Syscall.processID)
            let engine = Engine(services: [service], options: configuration.relay)
            let notifier = ServiceNotifier(engine: engine, exitIdleTime: configuration.exitIdleTime)
            let threads = configuration.relay.threads
            let startLine =
                "tcp-crossover \(tcpCrossoverVersion) listening on "
                + listeners.map(\.address.description).joined(separator: ", ")
                + ", relaying to \(describe(service)) (pid \(Syscall.processID), \(threads) threads)"
            ownsListeners = false
            do {
                try engine.run(listeners: listeners, connections: []) {
                    Log.notice(startLine)
                    if let ready = readiness.take() { ready.ready() }
                    notifier.ready()
                }
            } catch {
                throw StartupError(ExitStatus.systemError, error.description)
            }
            Log.notice("stopped: \(engine.statistics.snapshot())")
        } catch {
            if let readiness = readiness.take() { readiness.failed(error) }
            if let pidfile = pidfile.take() { pidfile.remove() }
            throw error
        }
        if let pidfile = pidfile.take() { pidfile.remove() }
    }

    static func resolve(_ remote: Endpoint) throws(StartupError) -> Service {
        switch remote.resolve() {
        case .success(let addresses): return Service(remote: remote, addresses: addresses)
        case .failure(let error): throw StartupError(ExitStatus.noHost, "\(error) (in --remote \(remote))")
        }
    }

    static func describe(_ service: Service) -> String {
        let addresses = service.addresses.map(\.description).joined(separator: ", ")
        if case .name = service.remote.host { return "\(service.remote) (\(addresses))" }
        return addresses
    }
}
