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
final class EventLoop: @unchecked Sendable {
    let index: Int
    unowned(unsafe) let engine: Engine
    let epoll: CInt
    private let wake: CInt
    private var signals: CInt = -1
    private var listeners: [LoopListener] = []
    private(set) var connections: [Connection?] = []
    private var freeSlots: [Int32] = []
    private var liveConnections = 0
    private var nextGeneration: UInt32 = 1
    private var timers = TimerHeap()
    private var moreWork: [Connection] = []
    private var moreWorkSpare: [Connection] = []
    private var events: UnsafeMutableBufferPointer<epoll_event>
    private let resources: LoopResources
    private(set) var now: Int64
    /// Accepting is paused: at the connection limit, or out of descriptors until `acceptResumeAt`.
    private var pausedForLimit = false
    private var acceptResumeAt: Int64?
    /// SIGTERM seen: the listeners are closed and live connections get until `stopDeadline`.
    private var stopping = false
    private var stopDeadline: Int64?
    /// Periodic work of the first loop (status, watchdog); the time each is next due.
    private var periodicDue: [Int64] = []
    /// Which remotes that are not loopback addresses are this machine's own (for `--loopback-congestion-control`).
    var ownAddresses = OwnAddressCache()
    /// The actions of a connect phase's last input (see `drive`), kept to spare an array per input.
    var connectActions: [ConnectPhase.Action] = []
    /// The per-connection log lines of the current turn.
    private var logBatch = LogBatch()
    /// This loop's counters for the metrics endpoint; nil without one.
    let meter: LoopMeter?
    /// Connections this loop serves, plus those handed to it and not yet taken: what the other loops compare when
    /// they even out the load (see `acceptConnections`).
    let load = Atomic<Int>(0)
    /// Connections another loop accepted and handed over; closed when the loop ends.
    private let inbox = Mutex(Inbox())
    private var handedSpare: [IncomingConnection] = []

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

    private func control(_ operation: CInt, _ fd: CInt, _ events: UInt32, _ data: UInt64) throws(SystemError) {
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

    private func registerListeners() {
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
            try Syscall.setConnectionOptions(accepted.fd, keepalive: engine.options.keepalive)
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
                if attempt != EventTag.attemptBits(connection.serverAttempt) { return }
            }
            connectionEvent(connection, side: kind == EventTag.client ? .client : .server, events: event.events)
        }
    }

    private func connectionEvent(_ connection: Connection, side: Side, events: UInt32) {
        noteReadiness(connection, side, events)
        let error = events & EPOLLERR.rawValue != 0
        if connection.phase == .connecting {
            // The client's socket (the server's attempts go to `connectProgressed`).
            if error, let failure = Syscall.pendingError(connection.client) {
                finish(connection, .failed(.client, failure))
            }
            return
        }
        service(connection)
        // An error that no call has reported yet (nothing was left to read or write on that socket, or no room to
        // read into): the relay judges whether it ends the connection (see `RelayState`).
        if error, connections[Int(connection.slot)] === connection {
            let fd = side == .client ? connection.client : connection.server
            if let failure = Syscall.pendingError(fd) {
                connection.relay.reportFailure(of: side, failure)
                service(connection)
            }
        }
    }

    /// Records what an event says about one socket of a connection in its relay's readiness.
    func noteReadiness(_ connection: Connection, _ side: Side, _ events: UInt32) {
        let error = events & EPOLLERR.rawValue != 0
        if events & (EPOLLIN.rawValue | EPOLLPRI.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue) != 0 || error {
            connection.relay.readiness[side].readable = true
            if events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue) != 0 || error {
                connection.relay.readiness[side].hungUp = true
            }
            if events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue) != 0 && !error {
                connection.relay.readiness[side].endReported = true
                if side == .server { stopKeepalive(connection) }
            }
            if error { connection.relay.readiness[side].failed = true }
            if events & EPOLLPRI.rawValue != 0 { connection.relay.readiness[side].urgent = true }
        }
        if events & (EPOLLOUT.rawValue | EPOLLHUP.rawValue) != 0 || error {
            connection.relay.readiness[side].writable = true
        }
    }

    /// The server has ended its stream: keepalive towards it is turned off, or never set. Probes could only find out
    /// that the server's machine has forgotten the finished connection (after `tcp_fin_timeout` once the server
    /// closed its socket) and draw a reset, while what the server sent may still be on its way to a slow client.
    /// Bytes the client sends later find out for themselves whether the server is still there. The client's socket
    /// keeps its keepalive: it tells whether a client that is still owed bytes, or still waited for, has vanished.
    private func stopKeepalive(_ connection: Connection) {
        connection.keepaliveDue = nil
        guard connection.keepaliveOnServer else { return }
        connection.keepaliveOnServer = false
        do {
            try Syscall.stopKeepalive(connection.server)
        } catch {
            if Log.enabled(.debug) { Log.debug("cannot stop keepalive towards \(connection.remoteAddress!): \(error)") }
        }
    }

    /// Moves a connection's bytes for one turn and acts on the result.
    func service(_ connection: Connection) {
        var io = SocketIO(client: connection.client, server: connection.server, resources: resources)
        let step = connection.relay.advance(&io, budget: engine.options.budget)
        let (up, down) = connection.relay.bytes
        if up != connection.accountedUp || down != connection.accountedDown {
            engine.statistics.bytesUp.add(up - connection.accountedUp, ordering: .relaxed)
            engine.statistics.bytesDown.add(down - connection.accountedDown, ordering: .relaxed)
            meter?.moved(connection.service, up: up - connection.accountedUp, down: down - connection.accountedDown)
            connection.accountedUp = up
            connection.accountedDown = down
            connection.lastActivity = now
        }
        if !connection.relay.readiness.client.writable && !connection.watchesClientOutput {
            watchClientOutput(connection)
            if connections[Int(connection.slot)] !== connection { return }
        }
        switch step {
        case .waiting:
            break
        case .moreWork:
            if !connection.queued {
                connection.queued = true
                moreWork.append(connection)
            }
        case .finished:
            finish(connection, .completed(first: connection.relay.firstToEnd))
        case .failed(let side, let errno):
            finish(
                connection, .failed(side, cause(of: errno, on: side == .client ? connection.client : connection.server))
            )
        case .failedOnceAcknowledged(let side, let errno):
            // The reset waits until the other side has acknowledged all it was sent: a reset discards what is still
            // unacknowledged. No event says when, so it is asked again every 100 ms.
            let other = side == .client ? connection.server : connection.client
            if Syscall.unacknowledgedBytes(other) == 0 {
                finish(connection, .failed(side, errno))
            } else if connection.acknowledgementCheckAt == nil {
                connection.acknowledgementCheckAt = now + 100
                armTimer(connection)
            }
        }
    }

    /// ENOTCONN and EPIPE say only that the socket is no longer connected; the socket's pending error, if it has
    /// one, says why (usually a reset), for the log line.
    private func cause(of errno: Errno, on fd: CInt) -> Errno {
        guard errno == Errno(ENOTCONN) || errno == .brokenPipe else { return errno }
        return Syscall.pendingError(fd) ?? errno
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

    // MARK: accepting

    private func acceptConnections(from index: Int) {
        // The listeners close on a stop request, perhaps earlier in the same batch of events as this one.
        guard index < listeners.count else { return }
        let listener = listeners[index]
        for _ in 0..<64 {
            guard engine.reserveConnection() else {
                pauseForLimit()
                return
            }
            let result: IOResult<Syscall.AcceptedSocket>
            do {
                result = try Syscall.accept(listener.fd)
            } catch {
                engine.cancelReservation()
                if error.isResourceExhaustion {
                    outOfResources("accept on \(listener.address)", error)
                    return
                }
                if error.isAcceptAgain { continue }
                Log.error("accept on \(listener.address) failed: \(error)")
                pauseAccepting(for: 1000)
                return
            }
            guard case .processed(let accepted) = result else {
                engine.cancelReservation()
                return
            }
            var local = listener.address
            if local.isUnspecified || local.port == 0 {
                local = (try? Syscall.localAddress(accepted.fd)) ?? local
            }
            if !listener.passesLoopbackCongestionControl && accepted.peer.isOnThisMachine(localEnd: local) {
                useLoopbackCongestionControl(accepted.fd)
            }
            let incoming = IncomingConnection(
                fd: accepted.fd, peer: accepted.peer, local: local, service: listener.service)
            if let other = engine.lessLoadedLoop(than: self), other.handOver(incoming) { continue }
            load.add(1, ordering: .relaxed)
            admit(incoming)
        }
    }

    /// Takes a connection that another loop accepted: a burst of connections wakes one loop, which accepts them
    /// all, and long-lived connections would stay on it while the other loops idle. False when this loop has ended.
    /// Callable from any thread.
    func handOver(_ connection: IncomingConnection) -> Bool {
        load.add(1, ordering: .relaxed)
        let taken = inbox.withLock { inbox in
            guard !inbox.closed else { return false }
            inbox.connections.append(connection)
            return true
        }
        if taken {
            wakeUp()
        } else {
            load.subtract(1, ordering: .relaxed)
        }
        return taken
    }

    /// Starts serving the connections handed over. `closing`: the loop is about to end, and the inbox is closed if
    /// nothing is waiting in it. Returns whether there were any.
    private func takeHandedOver(closing: Bool) -> Bool {
        inbox.withLock { inbox in
            if closing && inbox.connections.isEmpty { inbox.closed = true }
            swap(&inbox.connections, &handedSpare)
        }
        guard !handedSpare.isEmpty else { return false }
        for connection in handedSpare { admit(connection) }
        handedSpare.removeAll(keepingCapacity: true)
        return true
    }

    /// Starts relaying an accepted connection: registers the client socket and connects to the remote. The
    /// caller has reserved the connection in `engine`. The socket inherited TCP_NODELAY and keepalive from its
    /// listener, and has the loopback congestion control if the client is on this machine.
    private func admit(_ incoming: IncomingConnection) {
        let (fd, peer, local, service) = (incoming.fd, incoming.peer, incoming.local, incoming.service)
        engine.statistics.accepted.add(1, ordering: .relaxed)
        meter?.accepted(service)
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = Int32(connections.count)
            connections.append(nil)
        }
        let connection = Connection(
            slot: slot, generation: nextGeneration, service: service, client: fd,
            clientAddress: peer, localAddress: local, now: now)
        nextGeneration &+= 1
        if nextGeneration == 0 { nextGeneration = 1 }
        connections[Int(slot)] = connection
        liveConnections += 1
        if Log.enabled(.debug) { Log.debug("accepted \(peer) on \(local)") }
        if !engine.options.access.isEmpty, let reason = engine.options.access.refusal(of: peer) {
            engine.statistics.refusedByAccessRule.add(1, ordering: .relaxed)
            finish(connection, .refused(.accessRule, reason))
            return
        }
        if let limits = engine.clientLimits {
            switch limits.admit(peer, now: now) {
            case .admitted(let block):
                connection.clientBlock = block
            case .refused(let block, let refusal, _):
                engine.statistics.countRefusal(refusal)
                finish(connection, .refusedForClient(block, refusal))
                return
            }
        }
        guard readFirstBytes(connection) else { return }
        do {
            // A new socket has room to write: the client's is watched for reading only, until a write to it finds
            // it full (see `watchClientOutput`). Most request/response connections never do, and are spared an
            // event per connection. Registered after the first read, so that bytes it took raise no event.
            connection.relay.readiness.client.writable = true
            try control(
                EPOLL_CTL_ADD, fd, Self.inputEvents,
                EventTag.make(EventTag.client, index: Int(slot), generation: connection.generation))
        } catch {
            Log.error("cannot watch the connection from \(peer): \(error)")
            finish(connection, .failed(.client, error.errno))
            return
        }
        connect(connection)
    }

    /// Reads what the client sent with its handshake, if anything (an HTTP request, usually): it is held for the
    /// server, after the PROXY protocol header if there is one, and the connect to the server then delays its
    /// handshake's last ACK to send it with these bytes (TCP_QUICKACK off, as HAProxy's tcp-smart-connect), a
    /// segment fewer and one wake-up fewer for the server. A client that waits for the server to speak first (SMTP)
    /// costs one recv that finds nothing. Returns false when the client's socket failed: the connection is over.
    private func readFirstBytes(_ connection: Connection) -> Bool {
        let header =
            engine.options.proxyProtocol?.header(source: connection.clientAddress, destination: connection.localAddress)
            ?? []
        let room = UnsafeMutableRawBufferPointer(rebasing: resources.scratch[header.count...])
        var received = 0
        do {
            // An end of stream (0) is left where it is: the registration reports it.
            if case .processed(let count) = try Syscall.receive(connection.client, into: room) { received = count }
        } catch {
            finish(connection, .failed(.client, error))
            return false
        }
        guard received > 0 || !header.isEmpty else { return true }
        connection.firstBytesHeld = received > 0
        var io = SocketIO(client: connection.client, server: connection.server, resources: resources)
        connection.relay.sendFirst(header: header, received: UnsafeRawBufferPointer(rebasing: room[0..<received]), &io)
        return true
    }

    private static let inputEvents = EPOLLIN.rawValue | EPOLLPRI.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
    static let connectionEvents = inputEvents | EPOLLOUT.rawValue

    /// The client's socket was found full: from now on it is watched for room too (for good: a connection that
    /// filled it once carries bulk data). Adding EPOLLOUT reports at once a socket that has room again already.
    private func watchClientOutput(_ connection: Connection) {
        connection.watchesClientOutput = true
        let data = EventTag.make(EventTag.client, index: Int(connection.slot), generation: connection.generation)
        do {
            try control(EPOLL_CTL_MOD, connection.client, Self.connectionEvents, data)
        } catch {
            finish(connection, .failed(.client, error.errno))
        }
    }

    // MARK: ending

    /// Ends a connection: gives back its pipes and buffers, closes both sockets (with a reset unless both sides
    /// ended cleanly), and logs its line.
    func finish(_ connection: Connection, _ ending: Connection.Ending) {
        var io = SocketIO(client: connection.client, server: connection.server, resources: resources)
        if connection.relay.holdsResources { connection.relay.releaseResources(&io) }
        let clean: Bool
        if case .completed = ending { clean = true } else { clean = false }
        if !clean {
            // A failure on one side is passed on as a reset, never as a clean end of stream that could make a
            // truncated transfer look complete.
            Syscall.setResetOnClose(connection.client)
            if connection.server >= 0 { Syscall.setResetOnClose(connection.server) }
        }
        Syscall.close(connection.client)
        closeServer(connection)
        if !connection.otherAttempts.isEmpty { closeOtherAttempts(connection) }
        if let block = connection.clientBlock {
            engine.clientLimits?.release(block, now: now)
            connection.clientBlock = nil
        }
        connections[Int(connection.slot)] = nil
        freeSlots.append(connection.slot)
        liveConnections -= 1
        load.subtract(1, ordering: .relaxed)
        // Pooled pipes serve bursts of connections; an idle loop holds no descriptors beyond its own.
        if liveConnections == 0 {
            assert(resources.pipesInUse == 0, "a connection did not give its pipe back")
            resources.trimPipes()
        }
        if case .connectFailed = ending {
            engine.statistics.failedConnects.add(1, ordering: .relaxed)
        }
        engine.connectionEnded()
        if let meter { meter.ended(connection, ending, now: now) }
        // Refusals over a per-client limit are counted and logged once per episode (`ClientLimits`): a line each
        // would let one client flood the log.
        if case .refusedForClient = ending, !Log.enabled(.debug) { return }
        if engine.options.logConnections { logBatch.info { connection.summary(ending, now: now, into: &$0) } }
    }

    // MARK: timers

    /// Makes sure the heap holds an entry for the connection's deadline or an earlier one. A deadline that moved
    /// later (activity) needs nothing now: the entry is checked when it falls due.
    func armTimer(_ connection: Connection) {
        guard let due = deadline(of: connection) else { return }
        if let armed = connection.armedDeadline, armed <= due { return }
        connection.armedDeadline = due
        timers.push(.init(deadline: due, slot: connection.slot, generation: connection.generation))
    }

    private func deadline(of connection: Connection) -> Int64? {
        switch connection.phase {
        case .connecting: return connection.connectTimer
        case .relaying:
            let idle = engine.options.idleTimeout.map { connection.lastActivity + $0 }
            return earlier(earlier(idle, connection.keepaliveDue), connection.acknowledgementCheckAt)
        }
    }

    /// The earlier of two times, either of which may be missing.
    private func earlier(_ first: Int64?, _ second: Int64?) -> Int64? {
        guard let first, let second else { return first ?? second }
        return min(first, second)
    }

    /// How long a connection lives before keepalive is set on its socket to the server. Most connections end
    /// sooner and are spared four setsockopt(2) calls; a peer's silence is counted from the last bytes received
    /// either way. (The client's socket inherits keepalive from its listener at no cost.)
    static let keepaliveDelay: Int64 = 10_000

    private func runTimers() {
        while let entry = timers.popDue(now: now) {
            guard Int(entry.slot) < connections.count, let connection = connections[Int(entry.slot)],
                connection.generation == entry.generation, connection.armedDeadline == entry.deadline
            else { continue }
            connection.armedDeadline = nil
            guard let due = deadline(of: connection) else { continue }
            if due > now {
                armTimer(connection)
                continue
            }
            switch connection.phase {
            case .connecting:
                connectTimerFired(connection)
            case .relaying where connection.acknowledgementCheckAt.map({ $0 <= now }) ?? false:
                connection.acknowledgementCheckAt = nil
                service(connection)
                if connections[Int(connection.slot)] === connection { armTimer(connection) }
            case .relaying where connection.keepaliveDue.map({ $0 <= now }) ?? false:
                connection.keepaliveDue = nil
                if let keepalive = engine.options.keepalive {
                    do {
                        try Syscall.setKeepalive(connection.server, keepalive)
                        connection.keepaliveOnServer = true
                    } catch {
                        if Log.enabled(.debug) {
                            Log.debug("cannot set keepalive towards \(connection.remoteAddress!): \(error)")
                        }
                    }
                }
                armTimer(connection)
            case .relaying:
                finish(connection, .idleTimeout)
            }
        }
        if let resume = acceptResumeAt, resume <= now {
            acceptResumeAt = nil
            if !stopping && !pausedForLimit { registerListeners() }
        }
        if let deadline = stopDeadline, deadline <= now {
            stopDeadline = nil
            closeAllConnections()
        }
        for (position, due) in periodicDue.enumerated() where due <= now {
            let task = engine.periodicTasks[position]
            periodicDue[position] = now + task.interval
            task.run()
        }
    }

    // MARK: pausing and stopping

    private func pauseForLimit() {
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

    private func pauseAccepting(for milliseconds: Int64) {
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

    private func closeAllConnections() {
        for connection in connections {
            if let connection { finish(connection, .shutdown) }
        }
    }

    private func receiveSignals() {
        while let signal = Syscall.readSignal(signals) {
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
                Log.notice("statistics: \(engine.statistics.snapshot())\(engine.loadPerThread)")
            default:
                Log.info("signal \(signal) ignored")
            }
        }
    }
}
