import Glibc
import Synchronization

/// Work the first event loop does at a fixed interval: sd_notify STATUS, watchdog pings, the idle exit check.
public struct PeriodicTask: Sendable {
    /// Milliseconds between runs.
    public let interval: Int64
    public let run: @Sendable () -> Void

    public init(interval: Int64, run: @escaping @Sendable () -> Void) {
        self.interval = interval
        self.run = run
    }
}

/// A service's settings and remote pool, as the event loops read them (see `Engine.settings`).
final class ServiceSettings: Sendable {
    let options: ServiceOptions
    let pool: RemotePool

    init(options: ServiceOptions, pool: RemotePool) {
        self.options = options
        self.pool = pool
    }
}

/// The relay engine: event loops (one per thread) sharing the listeners, the figures, the connection limit and
/// the stop request. The first loop runs on the calling thread and also takes the signals.
public final class Engine: @unchecked Sendable {
    public let options: RelayOptions
    public let services: [Service]
    /// What the loops read of each service, by the same index, behind a reference: reading a field through
    /// `services[index]` copied the whole `Service` where the optimizer did not read it in place (4 copies per
    /// connection, each retaining and releasing its 16 references: some 1,800 instructions, by callgrind).
    let settings: [ServiceSettings]
    public let statistics: Statistics
    /// The connections of each client block (`--max-connections-per-client`, `--max-new-connections-per-client`),
    /// one table per service (by its index in `services`); nil for a service without those options.
    let clientLimits: [ClientLimits?]
    /// 0 while running; 1 after the first SIGTERM (stop accepting, let connections finish); 2 to stop at once.
    let stopLevel = Atomic<Int>(0)
    /// Loops that still hold their duplicates of the listeners; the socket stops taking connections when the last
    /// one closes them (see `listenersClosed`).
    private let loopsListening = Atomic<Int>(0)
    /// Loops that paused accepting at the connection limit and wait to be woken.
    let pausedForLimit = Atomic<Int>(0)
    /// The process ran out of descriptors and has not had a whole connection since: one log line per episode.
    let exhausted = Atomic<Bool>(false)
    /// What the loops' pipes may hold beyond their starting size, all loops together.
    let pipeBudget: PipeBudget
    /// Which connections to servers on this machine get the interface's segments (`--loopback-mss auto`).
    let wideSegments = WideSegmentBudget()
    /// Set before any loop runs; read-only afterwards.
    var periodicTasks: [PeriodicTask] = []
    /// Called once, on the first stop request (SIGTERM, SIGINT, the idle exit); set before `run`.
    var onStop: (@Sendable () -> Void)?
    /// The metrics endpoint (`--metrics`); set before `run`. Without it the loops count nothing for it.
    public var metrics: MetricsServer?
    /// systemd keeps a file descriptor store for the service's next process: the process serves listening sockets
    /// that systemd passed, and systemd listens for notifications. Set before `run`.
    public var descriptorStoreAvailable = false
    /// How many descriptors systemd's file descriptor store takes (FileDescriptorStoreMax=), as SIGUSR2 told it: 0
    /// until then. When it is more than 0, the next stop hands the established connections over to the next process
    /// through the store instead of draining them (see `EventLoop.handOver(_:)`).
    let descriptorStoreSlots = Atomic<Int>(0)
    /// Store slots taken by connections handed over: two sockets each, and two for each pipe that holds bytes.
    private let storeSlotsTaken = Atomic<Int>(0)
    /// Connections handed over to the next process, and the bytes in transit in their pipes.
    public let handedOver = Atomic<Int>(0)
    public let bytesHandedOverInPipes = Atomic<Int>(0)
    /// The start of the IDs of the connections this process hands over: its process ID, unique among the
    /// processes of the service.
    let storeIdentifierPrefix = String(Syscall.processID)
    /// The counter after that prefix.
    let storeSerial = Atomic<Int>(0)
    private var loops: [EventLoop] = []

    /// The signals the engine takes through a signalfd; they are blocked in every thread.
    static let handledSignals: [CInt] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2]

    public init(services: [Service], options: RelayOptions, statistics: Statistics = Statistics()) {
        self.services = services
        settings = services.map { ServiceSettings(options: $0.options, pool: $0.pool) }
        self.options = options
        self.statistics = statistics
        clientLimits = services.map { service in
            guard service.options.limitsClients else { return nil }
            return ClientLimits(
                limit: service.options.maximumConnectionsPerClient, rate: service.options.newConnectionRatePerClient,
                prefixes: service.options.clientPrefixes, expectedBlocks: min(options.maximumConnections, 4096),
                service: service.name)
        }
        for case let limits? in clientLimits {
            periodicTasks.append(
                PeriodicTask(interval: 1000) { limits.endQuietEpisodes(now: Syscall.monotonicMilliseconds()) })
        }
        pipeBudget = PipeBudget(bytes: options.pipeMemory, largestPipe: options.pipeSize)
    }

    /// Blocks the handled signals and ignores SIGPIPE, in the calling thread and every thread started after.
    /// Call before anything else starts threads.
    public static func prepareProcess() {
        Syscall.ignoreSignal(SIGPIPE)
        Syscall.blockSignals(handledSignals)
    }

    /// Adds work for the first loop; call before `run`.
    public func addPeriodicTask(_ task: PeriodicTask) {
        periodicTasks.append(task)
    }

    /// Relays the connections of `listeners` until SIGTERM or SIGINT, and `connections` (accepted before start)
    /// until they end. The engine takes the listening descriptors: each loop works on a duplicate of its own and
    /// the originals are closed at once, so that when the loops close their copies on stop, the socket stops
    /// taking connections (a socket systemd holds stays open in systemd).
    public func run(
        listeners: [ListeningSocket],
        connections: [AcceptedConnection],
        stored: [AdoptedConnection] = [],
        onReady: () -> Void = {}
    ) throws(SystemError) {
        guard Syscall.isForkedChild else {
            return try relay(listeners: listeners, connections: connections, stored: stored, onReady: onReady)
        }
        // The main thread of a forked process must not contend for Swift's locks (see `Syscall.isForkedChild`),
        // which every thread of the engine may take (the first loop, the metrics, the end of the client limits):
        // the engine runs on a thread of its own, and this one waits for it.
        var outcome: Result<Void, SystemError> = .success(())
        withoutActuallyEscaping(onReady) { onReady in
            do throws(Errno) {
                Syscall.joinThread(
                    try Syscall.startThread {
                        outcome = Result { () throws(SystemError) in
                            try self.relay(
                                listeners: listeners, connections: connections, stored: stored, onReady: onReady)
                        }
                    })
            } catch {
                outcome = .failure(SystemError("pthread_create", error))
            }
        }
        try outcome.get()
    }

    /// `run`, on the calling thread.
    private func relay(
        listeners: [ListeningSocket],
        connections: [AcceptedConnection],
        stored: [AdoptedConnection],
        onReady: () -> Void
    ) throws(SystemError) {
        // The tasks and the stop handler hold their owners (the service notifier, the idle exit), which hold the
        // engine: let go of them when the engine is done, so that nothing is left behind (LeakSanitizer checks).
        defer {
            onStop = nil
            periodicTasks.removeAll()
        }
        var originalsOpen = true
        defer { if originalsOpen { for listener in listeners { Syscall.close(listener.fd) } } }
        let loopCount = listeners.isEmpty ? 1 : (options.threads > 0 ? options.threads : Syscall.onlineProcessors)
        for index in 0..<loopCount {
            let loop = try EventLoop(index: index, engine: self)
            for listener in listeners { try loop.addListener(listener) }
            loops.append(loop)
        }
        for listener in listeners { Syscall.close(listener.fd) }
        originalsOpen = false
        loopsListening.store(listeners.isEmpty ? 0 : loopCount, ordering: .sequentiallyConsistent)
        try loops[0].handleSignals()
        for connection in connections { loops[0].adopt(connection) }
        for connection in stored { loops[0].adopt(connection) }

        var threads: [pthread_t] = []
        if !listeners.isEmpty && options.resolveInterval > 0 && services.contains(where: { $0.pool.hasNames }) {
            do {
                threads.append(try Syscall.startThread { [self] in lookUpRemotesAgain() })
            } catch {
                Log.warning("cannot start the thread that looks remote host names up again: \(error)")
            }
        }
        for loop in loops.dropFirst() {
            do {
                threads.append(try Syscall.startThread { loop.run() })
            } catch {
                requestStop(immediately: true)
                for thread in threads { Syscall.joinThread(thread) }
                throw SystemError("pthread_create", error)
            }
        }
        if let metrics {
            metrics.start(
                MetricsServer.Source(
                    serviceNames: services.map(\.name), meters: loops.compactMap(\.meter),
                    connectionLimit: options.maximumConnections,
                    wideSegments: adaptiveWideSegments))
        }
        defer { metrics?.stop() }
        onReady()
        loops[0].run()
        // The first loop ends after a stop request once its own connections are done (the other loops finish
        // theirs), or when its only connection (inetd) has ended, or on a failure of epoll itself.
        if stopLevel.load(ordering: .sequentiallyConsistent) == 0 { requestStop(immediately: true) }
        for thread in threads { Syscall.joinThread(thread) }
        loops.removeAll()
        for case let limits? in clientLimits {
            limits.endQuietEpisodes(now: Syscall.monotonicMilliseconds(), all: true)
        }
    }

    /// The resolver thread: every `resolveInterval`, looks the remotes' host names up again, off the event loops
    /// (getaddrinfo blocks), and gives the pools the new answers. A remote whose lookup fails keeps its last addresses.
    private func lookUpRemotesAgain() {
        var reported: [String] = []
        while true {
            var waited: Int64 = 0
            while waited < options.resolveInterval {
                if stopLevel.load(ordering: .relaxed) > 0 { return }
                let step = min(100, options.resolveInterval - waited)
                Syscall.sleep(milliseconds: step)
                waited += step
            }
            var failing: [String] = []
            for service in services where service.pool.hasNames {
                let refresh = service.pool.refresh()
                for problem in refresh.problems.map(\.description) {
                    // Once per problem that persists, not at every pass.
                    if !reported.contains(problem) { Log.warning("\(problem); the remote keeps its last addresses") }
                    failing.append(problem)
                }
                guard refresh.changed else { continue }
                Log.notice(
                    "remote \(service.pool.endpoints.map(\.description).joined(separator: ", ")) now at "
                        + service.pool.addresses.map(\.description).joined(separator: ", "))
            }
            reported = failing
        }
    }

    /// Asks every loop to stop: the first request lets connections finish, the second stops at once. Returns
    /// the new level.
    @discardableResult
    func requestStop(immediately: Bool = false) -> Int {
        let level: Int
        if immediately {
            level = 2
            if stopLevel.exchange(2, ordering: .sequentiallyConsistent) == 0 { onStop?() }
        } else {
            level = stopLevel.add(1, ordering: .sequentiallyConsistent).newValue
            if level == 1 { onStop?() }
        }
        wakeAll()
        return level
    }

    /// A loop closed its duplicates of the listeners on a stop request. Only when the last loop has done so does
    /// the socket refuse connections (unless systemd holds it, and keeps them for the next start), so only then is
    /// "no new connections" true and said.
    func listenersClosed() {
        if loopsListening.subtract(1, ordering: .sequentiallyConsistent).newValue == 0 { announceStop() }
    }

    /// The line a stop request gets once new connections are no longer taken.
    func announceStop() {
        Log.notice("stopping: no new connections, \(statistics.active.load(ordering: .relaxed)) still active")
    }

    /// Wakes every loop to look at the stop level and the connection limit.
    func wakeAll() {
        for loop in loops { loop.wakeUp() }
    }

    // MARK: the load of the loops

    /// The loop to hand a connection to that `loop` accepted, when one has clearly fewer connections; nil to keep
    /// it. The margin (a few connections, an eighth of the two loops' total) spares the churn of short connections
    /// a hand-over each, and evens out long-lived ones.
    func lessLoadedLoop(than loop: EventLoop) -> EventLoop? {
        guard loops.count > 1, stopLevel.load(ordering: .relaxed) == 0 else { return nil }
        let own = loop.load.load(ordering: .relaxed)
        var least: EventLoop?
        var leastLoad = Int.max
        for other in loops where other !== loop {
            let load = other.load.load(ordering: .relaxed)
            if load < leastLoad {
                least = other
                leastLoad = load
            }
        }
        return own - leastLoad > max(2, (own + leastLoad) / 8) ? least : nil
    }

    /// The wide-segment budget when `--loopback-mss auto` (the default) uses it, for the figures that report it.
    var adaptiveWideSegments: WideSegmentBudget? {
        if case .adaptive = options.loopbackMSS { wideSegments } else { nil }
    }

    /// `; 3 with the loopback interface's segments, room for 93`: the places taken in the wide-segment budget (see
    /// `LoopbackSegments.adaptive`) and what the last reading of TCP memory left room for (once there is one), for
    /// the SIGUSR1 line; empty with another `--loopback-mss`, or while no connection to a server on this machine has
    /// asked for a place or holds one.
    var wideSegmentFigures: String {
        guard let budget = adaptiveWideSegments else { return "" }
        let open = budget.openConnections
        guard let room = budget.roomAtLastReading else {
            return open > 0 ? "; \(open) with the loopback interface's segments" : ""
        }
        return "; \(open) with the loopback interface's segments, room for \(room)"
    }

    /// `; per thread 16, 15`: the connections of each loop, for the SIGUSR1 line; empty with one loop.
    var loadPerThread: String {
        guard loops.count > 1 else { return "" }
        return "; per thread " + loops.map { String($0.load.load(ordering: .relaxed)) }.joined(separator: ", ")
    }

    // MARK: the connection limit

    /// Counts a connection about to be accepted; false at the limit.
    @inline(__always)
    func reserveConnection() -> Bool {
        var current = statistics.active.load(ordering: .relaxed)
        while current < options.maximumConnections {
            let (exchanged, original) = statistics.active.compareExchange(
                expected: current, desired: current + 1, ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Undoes `reserveConnection` when accept found no connection.
    @inline(__always)
    func cancelReservation() {
        connectionEnded()
    }

    var hasCapacity: Bool { statistics.active.load(ordering: .sequentiallyConsistent) < options.maximumConnections }

    /// Takes `count` store slots for a connection to hand over; false when the store is full (or there is none),
    /// for systemd would close what it cannot store, and the connection would end with a clean end of stream.
    func reserveStoreSlots(_ count: Int) -> Bool {
        let slots = descriptorStoreSlots.load(ordering: .relaxed)
        guard slots > 0 else { return false }
        if storeSlotsTaken.add(count, ordering: .relaxed).newValue <= slots { return true }
        storeSlotsTaken.subtract(count, ordering: .relaxed)
        return false
    }

    /// Gives back the slots of a connection whose hand-over failed.
    func releaseStoreSlots(_ count: Int) {
        storeSlotsTaken.subtract(count, ordering: .relaxed)
    }

    /// Counts a connection that ended, and wakes loops waiting at the limit.
    @inline(__always)
    func connectionEnded() {
        statistics.active.subtract(1, ordering: .sequentiallyConsistent)
        if pausedForLimit.load(ordering: .sequentiallyConsistent) > 0 { wakeAll() }
    }
}
