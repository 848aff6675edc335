import Glibc

/// Starts tcp-crossover from a configuration: finds how it was started, resolves, binds or adopts the inherited
/// sockets, detaches when standalone, runs the engine, cleans up.
public enum Launcher {
    /// Runs until the relay stops; returns the exit status. Failures at start are reported in one line: on
    /// standard error when that is safe, to syslog when standard error may be the client's connection (inetd).
    public static func run(_ configuration: Configuration) -> CInt {
        let status = start(configuration)
        // Lines still queued (the "stopped" line) get a bounded time: a log reader that stopped must not keep the
        // process from exiting.
        Log.finish(within: finalLogMilliseconds)
        return status
    }

    /// How long the process waits at exit for a log that does not take its last lines.
    static let finalLogMilliseconds: Int64 = 1000

    private static func start(_ configuration: Configuration) -> CInt {
        Engine.prepareProcess()
        let level: LogLevel = configuration.debug ? .debug : .info
        let standardInput = Syscall.describe(STDIN_FILENO)
        let journal = Self.standardErrorIsJournal()
        Log.configure(target: initialLogTarget(standardInput: standardInput, journal: journal), level: level)
        do throws(StartupError) {
            let (mode, stored) = try detectMode(configuration, standardInput: standardInput)
            let identity = try Identity.lookUp(user: configuration.user, group: configuration.group)
            try checkCongestionControl(configuration.relay.loopbackCongestionControl)
            var configuration = configuration
            configuration.relay = limits(configuration, mode: mode)
            if let metrics = configuration.metrics, mode.servesOneConnection {
                throw StartupError(
                    ExitStatus.usage,
                    "--metrics \(metrics): a process started for one connection (inetd, systemd's Accept=yes) has no "
                        + "figures worth serving; give --metrics to a relay that serves a listening socket")
            }
            switch mode {
            case .standalone:
                try runStandalone(configuration, identity: identity, level: level, journal: journal)
            case .systemdListeners(let descriptors):
                try runActivated(
                    configuration, identity, listeners: descriptors.map { ($0.fd, $0.name) }, connection: nil,
                    stored: stored)
            case .systemdConnection(let descriptor):
                try runActivated(configuration, identity, listeners: [], connection: descriptor.fd)
            case .inetdListener:
                try detachStandardOutput(keepError: journal)
                try runActivated(configuration, identity, listeners: [(STDIN_FILENO, nil)], connection: nil)
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

    /// Whether this process may give its sockets `algorithm` (`--loopback-congestion-control`): checked at start and
    /// again as the `--user`, on a socket of its own, so that a name the kernel does not know or does not allow
    /// stops the start rather than leave every connection with the system's algorithm. Reno needs no check.
    private static func checkCongestionControl(_ algorithm: CongestionControl?) throws(StartupError) {
        guard let algorithm, algorithm != .reno else { return }
        let option = "--loopback-congestion-control"
        do throws(Errno) {
            let fd: CInt
            if let ipv6 = try? Syscall.streamSocket(family: AF_INET6) {
                fd = ipv6
            } else {
                fd = try Syscall.streamSocket(family: AF_INET)
            }
            defer { Syscall.close(fd) }
            try Syscall.setCongestionControl(fd, algorithm)
        } catch {
            switch error.rawValue {
            case ENOENT:
                throw StartupError(
                    ExitStatus.usage,
                    "\(option): the kernel has no algorithm '\(algorithm)' (see "
                        + "/proc/sys/net/ipv4/tcp_available_congestion_control)")
            case EPERM, EACCES:
                throw StartupError(
                    ExitStatus.usage,
                    "\(option): '\(algorithm)' is not allowed to this user (see "
                        + "/proc/sys/net/ipv4/tcp_allowed_congestion_control)")
            default:
                throw StartupError(
                    ExitStatus.systemError, "\(option): cannot set '\(algorithm)' on a socket: \(error)")
            }
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

    /// The start mode, and the connections the previous process stored in systemd's file descriptor store (their
    /// names say so: `StoredConnection`), which are passed beside the listening sockets and are not part of the mode.
    private static func detectMode(_ configuration: Configuration, standardInput: DescriptorKind)
        throws(StartupError) -> (StartMode, stored: [(fd: CInt, name: String)])
    {
        var passed: [(fd: CInt, name: String?)]
        switch Systemd.listenDescriptors() {
        case .success(let descriptors): passed = descriptors
        case .failure(let error): throw error
        }
        var stored: [(fd: CInt, name: String)] = []
        passed.removeAll { descriptor in
            guard let name = descriptor.name, StoredConnection.isStoredName(name) else { return false }
            try? Syscall.setCloseOnExec(descriptor.fd)
            stored.append((descriptor.fd, name))
            return true
        }
        let inherited = passed.map { InheritedDescriptor(fd: $0.fd, name: $0.name, kind: Syscall.describe($0.fd)) }
        for descriptor in inherited where descriptor.fd >= 0 { try? Syscall.setCloseOnExec(descriptor.fd) }
        switch StartMode.decide(
            systemd: inherited, standardInput: inherited.isEmpty ? standardInput : .notSocket,
            hasLocal: !configuration.locals.isEmpty)
        {
        case .success(let mode): return (mode, stored)
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
        listeners descriptors: [(fd: CInt, name: String?)],
        connection: CInt?,
        stored: [(fd: CInt, name: String)] = []
    ) throws(StartupError) {
        let services = try makeServices(configuration)
        var listeners: [ListeningSocket] = []
        var metricsSockets: [ListeningSocket] = []
        for (fd, name) in descriptors {
            let address: SocketAddress
            do {
                try Syscall.setNonBlocking(fd)
                address = try Syscall.localAddress(fd)
            } catch {
                throw StartupError(
                    ExitStatus.systemError, "the socket passed as descriptor \(fd) is unusable: \(error)")
            }
            let service =
                name == MetricsServer.socketName
                ? nil
                : try serviceIndex(
                    for: name, in: services, socket: name.map { "socket '\($0)'" } ?? address.description)
            do {
                // The sockets it accepts inherit these.
                let keepalive = service.map { services[$0].options.keepalive } ?? configuration.relay.service.keepalive
                try Syscall.setConnectionOptions(fd, keepalive: keepalive)
            } catch {
                throw StartupError(
                    ExitStatus.systemError, "the socket passed as descriptor \(fd) is unusable: \(error)")
            }
            guard let service else {
                // Never relayed: the metrics endpoint's own socket.
                metricsSockets.append(ListeningSocket(fd: fd, address: address, service: -1, name: name))
                continue
            }
            listeners.append(ListeningSocket(fd: fd, address: address, service: service, name: name))
        }
        if listeners.isEmpty && !descriptors.isEmpty {
            throw StartupError(
                ExitStatus.usage,
                "the only socket passed is the metrics socket ('\(MetricsServer.socketName)'): nothing to relay")
        }
        try checkEveryNameServes(services, listenerNames: listeners.map(\.name), where: "passed sockets")
        let metrics = try metricsServer(configuration, passed: metricsSockets)
        var accepted: [AcceptedConnection] = []
        if let connection {
            let service = try serviceIndex(for: nil, in: services, socket: "the connection")
            accepted.append(AcceptedConnection(fd: connection, service: service))
        }
        if let identity {
            try identity.assume()
            try checkCongestionControl(configuration.relay.loopbackCongestionControl)
        }
        // Only where listeners are served: a process per connection would say it for every client.
        if !listeners.isEmpty { LocalRemoteWarning.check(configuration, served(by: listeners, services)) }
        let engine = Engine(services: services, options: configuration.relay)
        engine.metrics = metrics
        let adopted = takeOver(stored, services: services)
        engine.descriptorStoreAvailable = !listeners.isEmpty && Systemd.notificationsExpected
        let notifier = ServiceNotifier(
            engine: engine, exitIdleTime: listeners.isEmpty ? nil : configuration.exitIdleTime)
        let startLine =
            listeners.isEmpty
            ? nil
            : "tcp-crossover \(tcpCrossoverVersion) serving \(describe(listeners, services))\(describe(metrics))"
        // One connection (inetd, Accept=yes) logs its line when it has ended: written at exit, without a thread,
        // unless --debug writes lines while it lasts.
        Log.startQueueing(writerThread: !listeners.isEmpty || configuration.debug)
        do {
            try engine.run(listeners: listeners, connections: accepted, stored: adopted) {
                if let startLine { Log.notice(startLine) }
                notifier.ready()
            }
        } catch {
            throw StartupError(ExitStatus.systemError, error.description)
        }
        let handedOver = engine.handedOver.load(ordering: .relaxed)
        if handedOver > 0 {
            let inPipes = engine.bytesHandedOverInPipes.load(ordering: .relaxed)
            Log.notice(
                "handed \(handedOver) connection(s) over to the next process through systemd's file descriptor "
                    + "store, with \(inPipes) bytes in transit in their pipes")
        }
        if !listeners.isEmpty { Log.notice("stopped: \(engine.statistics.snapshot())") }
    }

    /// Takes the connections the previous process stored: removes them from systemd's store (from now on this
    /// process owns them, and a connection that ends here must not stay open in the store), pairs each client's
    /// socket with its server's, and closes with a reset what cannot be relayed (a socket without its partner, a
    /// service this configuration does not have).
    private static func takeOver(_ stored: [(fd: CInt, name: String)], services: [Service]) -> [AdoptedConnection] {
        guard !stored.isEmpty else { return [] }
        var removed = Set<String>()
        for (_, name) in stored where removed.insert(name).inserted { Systemd.removeStored(name: name) }
        var (connections, unpaired) = AdoptedConnection.pair(stored)
        connections.removeAll { connection in
            guard connection.stored.service >= services.count else { return false }
            unpaired.append(contentsOf: connection.descriptors)
            return true
        }
        for fd in unpaired {
            Syscall.setResetOnClose(fd)
            Syscall.close(fd)
        }
        if !unpaired.isEmpty {
            Log.warning(
                "closed \(unpaired.count) stored descriptor(s) of the previous process that could not be paired or "
                    + "served: "
                    + stored.filter { unpaired.contains($0.fd) }.map(\.name).joined(separator: " "))
        }
        if !connections.isEmpty {
            Log.notice("took over \(connections.count) connection(s) from the previous process")
        }
        return connections
    }

    // MARK: standalone

    private static func runStandalone(
        _ configuration: Configuration,
        identity: Identity?,
        level: LogLevel,
        journal: Bool
    ) throws(StartupError) {
        let services = try makeServices(configuration)
        var pidfile: Pidfile? = nil
        if let path = configuration.pidfile { pidfile = try Pidfile(path: path) }
        var listeners: [ListeningSocket] = []
        // Until the engine takes them.
        var ownsListeners = true
        defer { if ownsListeners { for listener in listeners { Syscall.close(listener.fd) } } }
        for local in configuration.locals {
            let service = try serviceIndex(for: local.name, in: services, socket: "--local \(local)")
            let addresses: [SocketAddress]
            switch local.endpoint.resolve() {
            case .success(let resolved): addresses = resolved
            case .failure(let error): throw StartupError(ExitStatus.noHost, "\(error) (in --local \(local))")
            }
            for address in addresses {
                listeners.append(
                    try Listener.open(
                        address, dualStack: configuration.dualStack, keepalive: services[service].options.keepalive,
                        loopbackCongestionControl: configuration.relay.loopbackCongestionControl,
                        service: service, name: local.name))
            }
        }
        try checkEveryNameServes(services, listenerNames: configuration.locals.map(\.name), where: "--local")
        let metrics = try metricsServer(configuration, passed: [])

        if identity == nil && Syscall.identities.euid == 0 {
            // Said before detaching, on the terminal of whoever started it, where it can be acted on.
            Log.warning(
                "running as root with no --user: the relay keeps root's privileges while it serves the internet; "
                    + "give --user (for example --user nobody) to drop them once the sockets are bound")
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
                    let closing =
                        listeners.map(\.fd) + (metrics?.listeners.map(\.fd) ?? []) + [readiness?.fd].compactMap { $0 }
                    try Daemon.keepPidfile(kept, closing: closing)
                }
                try identity.assume()
                try checkCongestionControl(configuration.relay.loopbackCongestionControl)
            }
            try pidfile?.record(Syscall.processID)
            // Logged where the start line goes (syslog in the background), so that it stays with it.
            LocalRemoteWarning.check(configuration, served(by: listeners, services))
            let engine = Engine(services: services, options: configuration.relay)
            engine.metrics = metrics
            let notifier = ServiceNotifier(engine: engine, exitIdleTime: configuration.exitIdleTime)
            let threads = configuration.relay.threads
            let startLine =
                "tcp-crossover \(tcpCrossoverVersion) listening on \(describe(listeners, services)) "
                + "(pid \(Syscall.processID), \(threads) threads)\(describe(metrics))"
            ownsListeners = false
            Log.startQueueing(writerThread: true)
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

    /// The metrics endpoint: the sockets systemd passed for it (`passed`) and those of `--metrics`, bound here
    /// (every address of a host name); nil when there are none. It owns the sockets from then on.
    private static func metricsServer(_ configuration: Configuration, passed: [ListeningSocket])
        throws(StartupError) -> MetricsServer?
    {
        var sockets = passed
        do throws(StartupError) {
            if let endpoint = configuration.metrics {
                let addresses: [SocketAddress]
                switch endpoint.resolve() {
                case .success(let resolved): addresses = resolved
                case .failure(let error): throw StartupError(ExitStatus.noHost, "\(error) (in --metrics \(endpoint))")
                }
                for address in addresses {
                    sockets.append(
                        try Listener.open(
                            address, dualStack: false, keepalive: nil, loopbackCongestionControl: nil, service: -1,
                            name: MetricsServer.socketName))
                }
            }
        } catch {
            for socket in sockets { Syscall.close(socket.fd) }
            throw error
        }
        return sockets.isEmpty ? nil : MetricsServer(listeners: sockets)
    }

    /// `; metrics on [::1]:9100`, for the start line.
    static func describe(_ metrics: MetricsServer?) -> String {
        guard let metrics else { return "" }
        return "; metrics on " + metrics.listeners.map(\.address.description).joined(separator: ", ")
    }

    /// The services: one per name among the remotes, plus one for the unnamed remotes, each with its per-connection
    /// options (`Configuration.serviceOptions`, or the unnamed ones); each remote looked up now
    /// (a host name that does not resolve at start is an error), through `RemotePool.refresh`, as at every new
    /// lookup later.
    static func makeServices(_ configuration: Configuration) throws(StartupError) -> [Service] {
        var names: [String?] = []
        for remote in configuration.remotes where !names.contains(remote.name) { names.append(remote.name) }
        var services: [Service] = []
        for name in names {
            let endpoints = configuration.remotes.filter { $0.name == name }.map(\.endpoint)
            let options = name.flatMap { configuration.serviceOptions[$0] } ?? configuration.relay.service
            let pool = RemotePool(
                endpoints: endpoints, sources: options.sources, backoff: configuration.relay.failoverBackoff)
            for case .unresolved(let failure) in pool.refresh().problems {
                let remote = configuration.remotes.first { $0.name == name && "\($0.endpoint)".hasPrefix(failure.host) }
                throw StartupError(ExitStatus.noHost, "\(failure) (in --remote \(remote?.description ?? failure.host))")
            }
            guard !pool.addresses.isEmpty else {
                throw StartupError(
                    ExitStatus.usage, "no --remote address has the family of a --source address")
            }
            services.append(Service(name: name, pool: pool, options: options))
        }
        return services
    }

    /// The service for a listener named `name`: the remotes of that name, or else the unnamed ones.
    static func serviceIndex(for name: String?, in services: [Service], socket: String) throws(StartupError) -> Int {
        if let name, let index = services.firstIndex(where: { $0.name == name }) { return index }
        if let index = services.firstIndex(where: { $0.name == nil }) { return index }
        throw StartupError(
            ExitStatus.usage,
            "no --remote for \(socket): give --remote \(name.map { "\($0)=" } ?? "")ADDRESS:PORT")
    }

    /// A named remote that serves no listener is a mistake (a misspelt name): say so rather than ignore it.
    static func checkEveryNameServes(_ services: [Service], listenerNames: [String?], where place: String)
        throws(StartupError)
    {
        for service in services {
            if let name = service.name, !listenerNames.contains(name) {
                throw StartupError(
                    ExitStatus.usage, "--remote \(name)=... names no listener among the \(place)")
            }
        }
    }

    /// The services that `listeners` serve.
    static func served(by listeners: [ListeningSocket], _ services: [Service]) -> [Service] {
        services.indices.filter { index in listeners.contains { $0.service == index } }.map { services[$0] }
    }

    /// `[::]:25, relaying to 127.0.0.1:25`, or with names `[::]:25 (smtp), [::]:80 (http), relaying smtp to ...;
    /// http to ...`.
    static func describe(_ listeners: [ListeningSocket], _ services: [Service]) -> String {
        let addresses = listeners.map { listener in
            listener.address.description + (listener.name.map { " (\($0))" } ?? "")
        }
        let used = services.indices.filter { index in listeners.contains { $0.service == index } }
        let remotes = used.map { index in
            let service = services[index]
            return (service.name.map { "\($0) " } ?? "") + "to " + Service(name: nil, pool: service.pool).description
        }
        return addresses.joined(separator: ", ") + ", relaying " + remotes.joined(separator: "; ")
    }
}

extension StartMode {
    /// The process relays one connection and exits (inetd, systemd's `Accept=yes`).
    fileprivate var servesOneConnection: Bool {
        switch self {
        case .systemdConnection, .inetdConnection: true
        case .systemdListeners, .inetdListener, .standalone: false
        }
    }
}
