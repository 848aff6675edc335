import CLinux
import Glibc
import Synchronization

/// What an epoll event belongs to, packed into its 64-bit data: the kind in the low two bits, an index (connection
/// slot, listener or control descriptor) above it, and for connections the generation in the high 32 bits, so that
/// an event for a connection that ended earlier in the same batch is recognised and dropped. A socket to the server
/// also has its connect attempt in the index's top 8 bits (`attemptShift`): several attempts of one connection can
/// be in flight at once (Happy Eyeballs), and an event of an attempt closed earlier in the batch is dropped too.
enum EventTag {
    static let client: UInt64 = 0
    static let server: UInt64 = 1
    static let listener: UInt64 = 2
    static let control: UInt64 = 3

    static let wake = 0
    static let signals = 1

    /// The index's bits below the attempt: up to 4 million connection slots per loop.
    static let attemptShift = 22
    static let slotMask = (1 << attemptShift) - 1

    @inline(__always)
    static func make(_ kind: UInt64, index: Int, generation: UInt32 = 0, attempt: Int = 0) -> UInt64 {
        let index = index | attemptBits(attempt) << attemptShift
        return UInt64(generation) << 32 | UInt64(UInt32(truncatingIfNeeded: index)) << 2 | kind
    }

    /// The part of a connect attempt's number that its socket's events carry.
    @inline(__always)
    static func attemptBits(_ attempt: Int) -> Int { attempt & 0xff }
}

/// A listener as one event loop sees it: its own duplicate of the listening descriptor, so that every loop can
/// stop accepting and close its copy without racing the others.
struct LoopListener {
    let fd: CInt
    let address: SocketAddress
    let service: Int
    /// See `ListeningSocket.passesLoopbackCongestionControl`.
    let passesLoopbackCongestionControl: Bool
    var registered = false
}

/// One thread's event loop: edge-triggered epoll over its connections' sockets, level-triggered over the shared
/// listeners (with EPOLLEXCLUSIVE, so a new connection wakes one loop, not all).
///
/// This file holds the epoll plumbing, the loop and its dispatch, and pausing and stopping. The rest is one file per
/// subject: accepting, hand-over between loops and admission (`EventLoop+Accept.swift`), connecting and failover
/// (`Connect/EventLoop+Connect.swift`), relaying (`EventLoop+Relaying.swift`), timers and keepalive
/// (`EventLoop+Timers.swift`), and the end of a connection (`EventLoop+Ending.swift`).
final class EventLoop: @unchecked Sendable {
    let index: Int
    unowned(unsafe) let engine: Engine
    let epoll: CInt
    private let wake: CInt
    private var signals: CInt = -1
    private(set) var listeners: [LoopListener] = []
    var connections: [Connection?] = []
    var freeSlots: [Int32] = []
    var liveConnections = 0
    var nextGeneration: UInt32 = 1
    var timers = TimerHeap()
    var moreWork: [Connection] = []
    private var moreWorkSpare: [Connection] = []
    private var events: UnsafeMutableBufferPointer<epoll_event>
    let resources: LoopResources
    private(set) var now: Int64
    /// Accepting is paused: at the connection limit, or out of descriptors until `acceptResumeAt`.
    private(set) var pausedForLimit = false
    var acceptResumeAt: Int64?
    /// SIGTERM seen: the listeners are closed and live connections get until `stopDeadline`.
    private(set) var stopping = false
    var stopDeadline: Int64?
    /// Stopping hands the connections over to the next process through systemd's file descriptor store, each as
    /// soon as it holds no bytes (see `handOver(_:)`).
    var handingOver = false
    /// Periodic work of the first loop (status, watchdog); the time each is next due.
    var periodicDue: [Int64] = []
    /// Which remotes that are not loopback addresses are this machine's own (for `--loopback-congestion-control`).
    var ownAddresses = OwnAddressCache()
    /// The actions of a connect phase's last input (see `drive`), kept to spare an array per input.
    var connectActions: [ConnectPhase.Action] = []
    /// The per-connection log lines of the current turn.
    var logBatch = LogBatch()
    /// This loop's share of the process's figures (`Statistics`).
    let tally: LoopTally
    /// This loop's counters for the metrics endpoint; nil without one.
    let meter: LoopMeter?
    /// Connections this loop serves, plus those handed to it and not yet taken: what the other loops compare when
    /// they even out the load (see `acceptConnections`).
    let load = Atomic<Int>(0)
    /// Connections another loop accepted and handed over; closed when the loop ends.
    let inbox = Mutex(Inbox())
    var handedSpare: [IncomingConnection] = []

    /// An accepted connection and what `admit` needs with it; what one loop hands another.
    struct IncomingConnection {
        let fd: CInt
        let peer: SocketAddress
        let local: SocketAddress
        let service: Int
    }

    struct Inbox {
        var connections: [IncomingConnection] = []
        var closed = false
    }

    init(index: Int, engine: Engine) throws(SystemError) {
        self.index = index
        self.engine = engine
        do {
            epoll = try Syscall.epollCreate()
        } catch {
            throw SystemError("epoll_create1", error)
        }
        do {
            wake = try Syscall.eventFD()
        } catch {
            Syscall.close(epoll)
            throw SystemError("eventfd", error)
        }
        events = .allocate(capacity: 64)
        resources = LoopResources(
            copyChunk: min(engine.options.copyChunk, engine.options.pipeSize),
            startingPipe: engine.options.startingPipeSize, largestPipe: engine.options.pipeSize,
            budget: engine.pipeBudget)
        now = Syscall.monotonicMilliseconds()
        tally = engine.statistics.addTally()
        meter = engine.metrics == nil ? nil : LoopMeter(serviceCount: engine.services.count)
        try control(EPOLL_CTL_ADD, wake, EPOLLIN.rawValue, EventTag.make(EventTag.control, index: EventTag.wake))
    }

    deinit {
        for listener in listeners { Syscall.close(listener.fd) }
        Syscall.close(wake)
        Syscall.close(epoll)
        if signals >= 0 { Syscall.close(signals) }
        events.deallocate()
    }

    func control(_ operation: CInt, _ fd: CInt, _ events: UInt32, _ data: UInt64) throws(SystemError) {
        do {
            try Syscall.epollControl(epoll, operation, fd, events: events, data: data)
        } catch {
            throw SystemError("epoll_ctl", error)
        }
    }

    /// Takes SIGTERM, SIGINT, SIGHUP and SIGUSR1 through a signalfd; the first loop does this.
    func handleSignals() throws(SystemError) {
        do {
            signals = try Syscall.signalFD(Engine.handledSignals)
        } catch {
            throw SystemError("signalfd", error)
        }
        try control(EPOLL_CTL_ADD, signals, EPOLLIN.rawValue, EventTag.make(EventTag.control, index: EventTag.signals))
    }

    /// Adds this loop's duplicate of a listening socket.
    func addListener(_ socket: ListeningSocket) throws(SystemError) {
        let fd: CInt
        do {
            fd = try Syscall.duplicate(socket.fd)
        } catch {
            throw SystemError("dup of the listener", socket.address.description, error)
        }
        listeners.append(
            LoopListener(
                fd: fd, address: socket.address, service: socket.service,
                passesLoopbackCongestionControl: socket.passesLoopbackCongestionControl))
        try register(listenerAt: listeners.count - 1)
    }

    private func register(listenerAt index: Int) throws(SystemError) {
        guard !listeners[index].registered else { return }
        let data = EventTag.make(EventTag.listener, index: index)
        do {
            try Syscall.epollControl(
                epoll, EPOLL_CTL_ADD, listeners[index].fd, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue,
                data: data)
        } catch  where error == .invalidArgument {
            // A kernel without EPOLLEXCLUSIVE (before 4.5): every loop wakes, and all but one find nothing.
            try control(EPOLL_CTL_ADD, listeners[index].fd, EPOLLIN.rawValue, data)
        } catch {
            throw SystemError("epoll_ctl", listeners[index].address.description, error)
        }
        listeners[index].registered = true
    }

    private func unregisterListeners() {
        for index in listeners.indices where listeners[index].registered {
            _ = try? Syscall.epollControl(epoll, EPOLL_CTL_DEL, listeners[index].fd, events: 0, data: 0)
            listeners[index].registered = false
        }
    }

    func registerListeners() {
        for index in listeners.indices {
            do {
                try register(listenerAt: index)
            } catch {
                Log.error("\(error)")
            }
        }
    }

    /// Adopts a connection accepted before the relay started (inetd, systemd `Accept=yes`).
    func adopt(_ accepted: AcceptedConnection) {
        let peer = (try? Syscall.peerAddress(accepted.fd)) ?? .unspecified
        let local = (try? Syscall.localAddress(accepted.fd)) ?? .unspecified
        do {
            try Syscall.setNonBlocking(accepted.fd)
            try Syscall.setConnectionOptions(
                accepted.fd, keepalive: engine.settings[accepted.service].options.keepalive)
            if peer.isOnThisMachine(localEnd: local) { useLoopbackCongestionControl(accepted.fd) }
        } catch {
            Log.error("cannot make the connection from \(peer) non-blocking: \(error)")
            Syscall.close(accepted.fd)
            return
        }
        if engine.reserveConnection() {
            load.add(1, ordering: .relaxed)
            admit(IncomingConnection(fd: accepted.fd, peer: peer, local: local, service: accepted.service))
        } else {
            Syscall.close(accepted.fd)
        }
    }

    // MARK: the loop

    /// Runs until the listeners are closed (SIGTERM) and the last connection has ended.
    func run() {
        if index == 0 { periodicDue = engine.periodicTasks.map { now + $0.interval } }
        repeat {
            runUntilDone()
        } while takeHandedOver(closing: true)
        logBatch.flush()
    }

    private func runUntilDone() {
        while !listeners.isEmpty || load.load(ordering: .relaxed) > 0 || waitsForOtherLoops {
            let timeout = moreWork.isEmpty ? waitTimeout() : 0
            let count: Int
            do {
                count = try Syscall.epollWait(epoll, events, timeout: timeout)
            } catch {
                Log.error("epoll_wait failed: \(error)")
                break
            }
            now = Syscall.monotonicMilliseconds()
            for position in 0..<count {
                dispatch(events[position])
            }
            if count == events.count && events.count < 4096 {
                let larger = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: events.count * 2)
                events.deallocate()
                events = larger
            }
            runMoreWork()
            runTimers()
            logBatch.flush()
        }
    }

    /// The first loop takes the signals (a second SIGTERM must still stop everything at once), so while stopping
    /// it runs until every loop's connections have ended, looking every 100 ms.
    private var waitsForOtherLoops: Bool {
        index == 0 && stopping && engine.statistics.active.load(ordering: .relaxed) > 0
    }

    private func waitTimeout() -> CInt {
        var earliest = timers.earliest
        if waitsForOtherLoops { earliest = min(earliest ?? .max, now + 100) }
        func consider(_ time: Int64?) {
            guard let time else { return }
            earliest = earliest.map { min($0, time) } ?? time
        }
        consider(acceptResumeAt)
        consider(stopDeadline)
        for due in periodicDue { consider(due) }
        guard let earliest else { return -1 }
        return CInt(clamping: max(0, min(earliest - now, 60_000)))
    }

    @inline(__always)
    private func dispatch(_ event: epoll_event) {
        let data = event.data.u64
        let kind = data & 3
        let index = Int(UInt32(truncatingIfNeeded: data) >> 2)
        switch kind {
        case EventTag.listener:
            acceptConnections(from: index)
        case EventTag.control:
            if index == EventTag.wake {
                Syscall.drainEvent(wake)
                _ = takeHandedOver(closing: false)
                engineChanged()
            } else {
                receiveSignals()
            }
        default:
            let slot = index & EventTag.slotMask
            guard slot < connections.count, let connection = connections[slot],
                connection.generation == UInt32(truncatingIfNeeded: data >> 32)
            else { return }
            if kind == EventTag.server {
                let attempt = index >> EventTag.attemptShift
                if connection.phase == .connecting {
                    connectProgressed(connection, attemptTag: attempt, events: event.events)
                    return
                }
                // A connect attempt that lost to this one, closed earlier in the batch.
                if attempt != Int(connection.serverAttemptBits) { return }
            }
            connectionEvent(connection, side: kind == EventTag.client ? .client : .server, events: event.events)
        }
    }

    private func runMoreWork() {
        guard !moreWork.isEmpty else { return }
        swap(&moreWork, &moreWorkSpare)
        for connection in moreWorkSpare {
            connection.queued = false
            if connections[Int(connection.slot)] === connection {
                service(connection)
            }
        }
        moreWorkSpare.removeAll(keepingCapacity: true)
    }

    // MARK: pausing and stopping

    func pauseForLimit() {
        guard !pausedForLimit else { return }
        pausedForLimit = true
        unregisterListeners()
        engine.pausedForLimit.add(1, ordering: .sequentiallyConsistent)
        meter?.acceptPaused(.connectionLimit)
        if Log.enabled(.debug) { Log.debug("connection limit reached; accepting pauses") }
        // A connection may have ended between the failed reservation and the count above, with no loop to wake.
        if engine.hasCapacity { resumeAfterLimit() }
    }

    private func resumeAfterLimit() {
        guard pausedForLimit else { return }
        pausedForLimit = false
        engine.pausedForLimit.subtract(1, ordering: .sequentiallyConsistent)
        if !stopping && acceptResumeAt == nil { registerListeners() }
    }

    func pauseAccepting(for milliseconds: Int64) {
        unregisterListeners()
        acceptResumeAt = now + milliseconds
    }

    /// Descriptors (or memory) ran out: close the pooled pipes and pause accepting for a moment. One log line per
    /// episode, for the whole process.
    func outOfResources(_ operation: String, _ error: Errno) {
        resources.trimPipes()
        meter?.acceptPaused(.noDescriptor)
        if !engine.exhausted.exchange(true, ordering: .relaxed) {
            Log.warning("\(operation) failed: \(error); accepting pauses until descriptors are free")
        }
        pauseAccepting(for: 100)
    }

    /// A whole connection, both sockets, could be had again: the episode is over.
    func descriptorsAvailable() {
        if engine.exhausted.exchange(false, ordering: .relaxed) {
            Log.notice("descriptors are available again: accepting on every listener")
        }
    }

    /// Makes the loop look at the engine's stop level and connection limit; callable from any thread.
    func wakeUp() {
        Syscall.signalEvent(wake)
    }

    /// A wake-up from another loop: the engine is stopping, or a connection slot has become free.
    private func engineChanged() {
        let level = engine.stopLevel.load(ordering: .sequentiallyConsistent)
        if level > 0 && !stopping {
            stopping = true
            stopDeadline = now + engine.options.shutdownTimeout
            if engine.descriptorStoreSlots.load(ordering: .sequentiallyConsistent) > 0 && level == 1 {
                handingOver = true
                for connection in connections {
                    if let connection { handOver(connection) }
                }
            }
            if !listeners.isEmpty {
                unregisterListeners()
                for listener in listeners { Syscall.close(listener.fd) }
                listeners.removeAll()
                engine.listenersClosed()
            }
        }
        if level > 1 {
            closeAllConnections()
        }
        if pausedForLimit && engine.hasCapacity { resumeAfterLimit() }
    }

    func closeAllConnections() {
        for connection in connections {
            if let connection { finish(connection, .shutdown) }
        }
    }

    /// SIGUSR2: the stop that follows is a restart (the units' ExecStop= asks systemd which job stops the service,
    /// and sends it with sigqueue(3) and the store's size, FileDescriptorStoreMax=, as its value; without a value,
    /// $FDSTORE gives the size): it hands the established connections over to the next process through systemd's
    /// file descriptor store, instead of draining them. Where there is no store, nothing changes.
    private func prepareHandOver(slots value: Int) {
        let slots = value > 0 ? value : Syscall.environment("FDSTORE").flatMap { Int($0) } ?? 0
        guard engine.descriptorStoreAvailable, slots > 0, !stopping else {
            Log.notice("SIGUSR2 ignored: no file descriptor store to hand the connections over to")
            return
        }
        engine.descriptorStoreSlots.store(slots, ordering: .sequentiallyConsistent)
        Log.info("the next stop hands the connections over to the next process (file descriptor store of \(slots))")
    }

    private func receiveSignals() {
        while let (signal, value) = Syscall.readSignal(signals) {
            switch signal {
            case SIGTERM, SIGINT:
                if engine.requestStop() > 1 {
                    Log.notice("stopping now")
                } else if listeners.isEmpty {
                    engine.announceStop()
                } else {
                    // This loop's listeners close now, not at its wake-up; the last loop to close its own says so.
                    engineChanged()
                }
            case SIGUSR1:
                Log.notice(
                    "statistics: \(engine.statistics.snapshot())\(engine.wideSegmentFigures)\(engine.loadPerThread)")
            case SIGUSR2:
                prepareHandOver(slots: Int(value))
            default:
                Log.info("signal \(signal) ignored")
            }
        }
    }
}
