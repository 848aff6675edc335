import CLinux
import Glibc
import Synchronization

/// What an epoll event belongs to, packed into its 64-bit data: the kind in the low two bits, an index (connection
/// slot, listener or control descriptor) above it, and for connections the generation in the high 32 bits, so that
/// an event for a connection that ended earlier in the same batch is recognised and dropped.
enum EventTag {
    static let client: UInt64 = 0
    static let server: UInt64 = 1
    static let listener: UInt64 = 2
    static let control: UInt64 = 3

    static let wake = 0
    static let signals = 1

    @inline(__always)
    static func make(_ kind: UInt64, index: Int, generation: UInt32 = 0) -> UInt64 {
        UInt64(generation) << 32 | UInt64(UInt32(truncatingIfNeeded: index)) << 2 | kind
    }
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
    private let epoll: CInt
    private let wake: CInt
    private var signals: CInt = -1
    private var listeners: [LoopListener] = []
    private var connections: [Connection?] = []
    private var freeSlots: [Int32] = []
    private var liveConnections = 0
    private var nextGeneration: UInt32 = 1
    private var timers = TimerHeap()
    private var moreWork: [Connection] = []
    private var moreWorkSpare: [Connection] = []
    private var events: UnsafeMutableBufferPointer<epoll_event>
    private let resources: LoopResources
    private var now: Int64
    /// Accepting is paused: at the connection limit, or out of descriptors until `acceptResumeAt`.
    private var pausedForLimit = false
    private var acceptResumeAt: Int64?
    /// SIGTERM seen: the listeners are closed and live connections get until `stopDeadline`.
    private var stopping = false
    private var stopDeadline: Int64?
    /// Stopping hands the connections over to the next process through systemd's file descriptor store, each as
    /// soon as it holds no bytes (see `handOver(_:)`).
    private var handingOver = false
    /// Periodic work of the first loop (status, watchdog); the time each is next due.
    private var periodicDue: [Int64] = []
    /// Which remotes that are not loopback addresses are this machine's own (for `--loopback-congestion-control`).
    private var ownAddresses = OwnAddressCache()
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
            copyChunk: min(engine.options.copyChunk, engine.options.pipeSize), pipeSize: engine.options.pipeSize)
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
            guard index < connections.count, let connection = connections[index],
                connection.generation == UInt32(truncatingIfNeeded: data >> 32)
            else { return }
            connectionEvent(connection, side: kind == EventTag.client ? .client : .server, events: event.events)
        }
    }

    private func connectionEvent(_ connection: Connection, side: Side, events: UInt32) {
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
        if connection.phase == .connecting {
            if side == .server {
                connectProgressed(connection, events: events)
            } else if error, let failure = Syscall.pendingError(connection.client) {
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
    private func service(_ connection: Connection) {
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
        if handingOver, step != .finished, connections[Int(connection.slot)] === connection { handOver(connection) }
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
        let connection = place { slot, generation in
            Connection(
                slot: slot, generation: generation, service: service, client: fd,
                clientAddress: peer, localAddress: local, now: now)
        }
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
                EventTag.make(EventTag.client, index: Int(connection.slot), generation: connection.generation))
        } catch {
            Log.error("cannot watch the connection from \(peer): \(error)")
            finish(connection, .failed(.client, error.errno))
            return
        }
        connection.candidates = engine.services[service].pool.candidates(now: now)
        connect(connection)
    }

    /// Gives a new connection a slot and a generation, and counts it live.
    private func place(_ make: (Int32, UInt32) -> Connection) -> Connection {
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = Int32(connections.count)
            connections.append(nil)
        }
        let connection = make(slot, nextGeneration)
        nextGeneration &+= 1
        if nextGeneration == 0 { nextGeneration = 1 }
        connections[Int(slot)] = connection
        liveConnections += 1
        return connection
    }

    /// Goes on relaying a connection that the previous process handed over through systemd's file descriptor
    /// store, from the state its name carried: its start, its bytes so far, which ends have passed. The caller has
    /// removed it from the store and checked its service. Not counted as accepted in the figures (STATUS=,
    /// SIGUSR1): the previous process did that.
    func adopt(_ adopted: AdoptedConnection) {
        let stored = adopted.stored
        guard engine.reserveConnection() else {
            Log.warning("cannot take over a connection from the previous process: at the connection limit")
            for fd in adopted.descriptors {
                Syscall.setResetOnClose(fd)
                Syscall.close(fd)
            }
            return
        }
        load.add(1, ordering: .relaxed)
        // The metrics' active gauge is accepted minus ended: the connection counts as accepted by this process there.
        meter?.accepted(stored.service)
        let peer = (try? Syscall.peerAddress(adopted.client)) ?? .unspecified
        let local = (try? Syscall.localAddress(adopted.client)) ?? .unspecified
        let connection = place { slot, generation in
            Connection(
                slot: slot, generation: generation, service: stored.service, client: adopted.client,
                clientAddress: peer, localAddress: local, now: now, startedAt: min(stored.startedAt, now))
        }
        connection.server = adopted.server
        connection.remoteAddress = (try? Syscall.peerAddress(adopted.server)) ?? .unspecified
        connection.phase = .relaying
        connection.relay = RelayState(
            restoring: stored.relay, upstreamPipe: adopted.upstreamPipe.map(resources.adoptPipe),
            downstreamPipe: adopted.downstreamPipe.map(resources.adoptPipe))
        // Only bytes moved from now on count in this process's figures.
        (connection.accountedUp, connection.accountedDown) = connection.relay.bytes
        if let limits = engine.clientLimits, case .admitted(let block) = limits.admit(peer, now: now) {
            connection.clientBlock = block
        }
        // Non-blocking already (the flag belongs to the open socket, which the store kept): set again all the same.
        try? Syscall.setNonBlocking(adopted.client)
        try? Syscall.setNonBlocking(adopted.server)
        do throws(SystemError) {
            // Registered as `admit` and `connect` do; epoll reports each socket's present state at once (a FIN
            // or a reset that came while no process held it included).
            try control(
                EPOLL_CTL_ADD, adopted.client, Self.inputEvents,
                EventTag.make(EventTag.client, index: Int(connection.slot), generation: connection.generation))
            try control(
                EPOLL_CTL_ADD, adopted.server, Self.connectionEvents,
                EventTag.make(EventTag.server, index: Int(connection.slot), generation: connection.generation))
        } catch {
            Log.error("cannot take over the connection from \(peer): \(error)")
            finish(connection, .failed(.client, error.errno))
            return
        }
        if engine.options.keepalive != nil && !stored.relay.serverToClient.sourceEnded {
            connection.keepaliveDue = now + Self.keepaliveDelay
        }
        if Log.enabled(.debug) {
            Log.debug("took over \(peer) -> \(local) -> \(connection.remoteAddress!) from the previous process")
        }
        armTimer(connection)
        service(connection)
    }

    /// Hands a connection over to the next process through systemd's file descriptor store, if it holds no bytes
    /// and the store has room: its two sockets are stored under names that carry its state (`StoredConnection`),
    /// and this process lets go of them without a reset; systemd's duplicates keep them open. Otherwise the
    /// connection goes on here, and is tried again after its next turn (until the stop's deadline).
    private func handOver(_ connection: Connection) {
        guard connection.phase == .relaying, connection.acknowledgementCheckAt == nil else { return }
        if connection.relay.holdsResources {
            var io = SocketIO(client: connection.client, server: connection.server, resources: resources)
            connection.relay.moveHeldBytesIntoPipes(&io)
        }
        guard let snapshot = connection.relay.snapshot else { return }
        var descriptors: [(fd: CInt, name: (StoredConnection) -> String)] = [
            // The client's socket last: it names the others, and one stored without them would be reset.
            (connection.server, { $0.serverName })
        ]
        for (direction, source) in [
            (connection.relay.clientToServer, Side.client), (connection.relay.serverToClient, .server),
        ]
        where direction.pipeBytes > 0 {
            guard let pipe = direction.pipe else { return }
            descriptors.append((pipe.readEnd, { $0.pipeName(source: source, writeEnd: false) }))
            descriptors.append((pipe.writeEnd, { $0.pipeName(source: source, writeEnd: true) }))
        }
        descriptors.append((connection.client, { $0.clientName }))
        guard engine.reserveStoreSlots(descriptors.count) else { return }
        let stored = StoredConnection(
            id: "\(engine.storeIdentifierPrefix)-\(engine.storeSerial.add(1, ordering: .relaxed).newValue)",
            service: connection.service, startedAt: connection.startedAt, relay: snapshot)
        for (position, descriptor) in descriptors.enumerated()
        where !Systemd.store(descriptor.fd, name: descriptor.name(stored)) {
            for earlier in descriptors[..<position] { Systemd.removeStored(name: earlier.name(stored)) }
            engine.releaseStoreSlots(descriptors.count)
            return
        }
        engine.handedOver.add(1, ordering: .relaxed)
        engine.bytesHandedOverInPipes.add(
            snapshot.clientToServer.pipeBytes + snapshot.serverToClient.pipeBytes, ordering: .relaxed)
        // The pipes with bytes are in the store now: this process closes its ends without emptying them.
        let pipes = connection.relay.detachPipesInTransit()
        for pipe in [pipes.upstream, pipes.downstream].compactMap({ $0 }) { resources.discardPipe(pipe) }
        if Log.enabled(.debug) {
            Log.debug("handed \(connection.clientAddress) -> \(connection.remoteAddress!) over to the next process")
        }
        forget(connection)
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
    private static let connectionEvents = inputEvents | EPOLLOUT.rawValue

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

    // MARK: connecting

    /// Gives a socket whose peer is on this machine the algorithm of `--loopback-congestion-control`, if any.
    private func useLoopbackCongestionControl(_ fd: CInt) {
        guard let algorithm = engine.options.loopbackCongestionControl else { return }
        Syscall.useCongestionControl(fd, algorithm)
    }

    /// Connects to the service's addresses in order, starting at `connection.attempt`. Out of descriptors, the
    /// client is not dropped: it waits, as it would in the listen backlog, and the socket is tried again shortly,
    /// for as long as the connect timeout allows.
    private func connect(_ connection: Connection) {
        while connection.attempt < connection.candidates.count {
            let address = connection.candidates[connection.attempt]
            do throws(Errno) {
                let fd = try Syscall.streamSocket(family: address.addressFamily)
                connection.server = fd
                connection.remoteAddress = address
                connection.waitingSince = nil
                if engine.exhausted.load(ordering: .relaxed) { descriptorsAvailable() }
                // Keepalive comes later, on connections that live long enough to need it (see `keepaliveDue`).
                try Syscall.setConnectionOptions(fd, keepalive: nil)
                // Nil for a remote that is not a loopback address and was not looked at lately: the connect below
                // tells whether it is this machine's own.
                let onThisMachine = address.isLoopback ? true : ownAddresses.isOnThisMachine(address, now: now)
                if onThisMachine == true { useLoopbackCongestionControl(fd) }
                if connection.firstBytesHeld { try Syscall.setQuickAck(fd, false) }
                if let source = engine.options.sources.first(where: { $0.family == address.family }) {
                    try Syscall.bindForConnect(fd, to: source)
                }
                try Syscall.epollControl(
                    epoll, EPOLL_CTL_ADD, fd, events: Self.connectionEvents,
                    data: EventTag.make(EventTag.server, index: Int(connection.slot), generation: connection.generation)
                )
                let connectedAtOnce = try Syscall.connect(fd, to: address)
                if onThisMachine == nil, engine.options.loopbackCongestionControl != nil,
                    let source = try? Syscall.localAddress(fd), ownAddresses.learn(address, source: source, now: now)
                {
                    useLoopbackCongestionControl(fd)
                }
                if connectedAtOnce {
                    connected(connection)
                } else {
                    connection.connectDeadline = now + engine.options.connectTimeout
                    armTimer(connection)
                }
                return
            } catch {
                connection.connectError = "connect to \(address) failed: \(error)"
                if Log.enabled(.debug) { Log.debug(connection.connectError) }
                closeServer(connection)
                if error.isResourceExhaustion {
                    outOfResources("socket", error)
                    let since = connection.waitingSince ?? now
                    if now - since < engine.options.connectTimeout {
                        connection.waitingSince = since
                        connection.retryAt = now + 100
                        armTimer(connection)
                        return
                    }
                    connection.connectError = "no descriptor to connect to \(address) within the connect timeout"
                    meter?.connectFailed(connection.service, remote: address, .noDescriptor)
                    break
                }
                engine.services[connection.service].pool.failed(address, now: now)
                meter?.connectFailed(connection.service, remote: address, ConnectFailure(error))
                connection.attempt += 1
            }
        }
        finish(connection, .connectFailed(connection.connectError))
    }

    /// An event on a socket whose connect is in progress: writable means connected, an error or hang-up means
    /// failed (SO_ERROR says why; a success needs no call to learn it).
    private func connectProgressed(_ connection: Connection, events: UInt32) {
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
            let error = Syscall.pendingError(connection.server) ?? .connectionRefused
            connectFailed(connection, "connect to \(connection.remoteAddress!) failed: \(error)", ConnectFailure(error))
        } else if events & EPOLLOUT.rawValue != 0 {
            connected(connection)
        }
    }

    private func connectFailed(_ connection: Connection, _ reason: String, _ failure: ConnectFailure) {
        connection.connectError = reason
        if Log.enabled(.debug) { Log.debug(reason) }
        if let address = connection.remoteAddress {
            engine.services[connection.service].pool.failed(address, now: now)
            meter?.connectFailed(connection.service, remote: address, failure)
        }
        closeServer(connection)
        connection.relay.readiness.server.readable = false
        connection.relay.readiness.server.writable = false
        connection.attempt += 1
        connect(connection)
    }

    private func connected(_ connection: Connection) {
        connection.phase = .relaying
        meter?.connected(connection.service, after: now - connection.startedAt)
        connection.relay.readiness.server.writable = true
        connection.lastActivity = now
        // Not for a server whose end of stream came with the connect (see `stopKeepalive`).
        if engine.options.keepalive != nil && !connection.relay.readiness.server.endReported {
            connection.keepaliveDue = now + Self.keepaliveDelay
        }
        engine.services[connection.service].pool.succeeded(connection.remoteAddress!)
        if Log.enabled(.debug) {
            Log.debug("relaying \(connection.clientAddress) to \(connection.remoteAddress!)")
        }
        armTimer(connection)
        service(connection)
        if connection.firstBytesHeld, connections[Int(connection.slot)] === connection {
            // The first bytes took the handshake's ACK along: from now on the server's segments are acknowledged
            // as on any new connection (at once at first), so that a server that writes twice before it reads,
            // with Nagle's algorithm on, does not wait for a delayed ACK.
            connection.firstBytesHeld = false
            try? Syscall.setQuickAck(connection.server, true)
        }
    }

    private func closeServer(_ connection: Connection) {
        if connection.server >= 0 {
            Syscall.close(connection.server)
            connection.server = -1
        }
    }

    // MARK: ending

    /// Ends a connection: gives back its pipes and buffers, closes both sockets (with a reset unless both sides
    /// ended cleanly), and logs its line.
    private func finish(_ connection: Connection, _ ending: Connection.Ending) {
        let clean: Bool
        if case .completed = ending { clean = true } else { clean = false }
        if !clean {
            // A failure on one side is passed on as a reset, never as a clean end of stream that could make a
            // truncated transfer look complete.
            Syscall.setResetOnClose(connection.client)
            if connection.server >= 0 { Syscall.setResetOnClose(connection.server) }
        }
        if case .connectFailed = ending {
            engine.statistics.failedConnects.add(1, ordering: .relaxed)
        }
        forget(connection)
        if let meter { meter.ended(connection, ending, now: now) }
        // Refusals over a per-client limit are counted and logged once per episode (`ClientLimits`): a line each
        // would let one client flood the log.
        if case .refusedForClient = ending, !Log.enabled(.debug) { return }
        if engine.options.logConnections { logBatch.info { connection.summary(ending, now: now, into: &$0) } }
    }

    /// Closes a connection's sockets (as they are set: `finish` sets a reset first where one is due) and frees its
    /// slot, its client block and its count.
    private func forget(_ connection: Connection) {
        var io = SocketIO(client: connection.client, server: connection.server, resources: resources)
        if connection.relay.holdsResources { connection.relay.releaseResources(&io) }
        Syscall.close(connection.client)
        closeServer(connection)
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
        engine.connectionEnded()
    }

    // MARK: timers

    /// Makes sure the heap holds an entry for the connection's deadline or an earlier one. A deadline that moved
    /// later (activity) needs nothing now: the entry is checked when it falls due.
    private func armTimer(_ connection: Connection) {
        guard let due = deadline(of: connection) else { return }
        if let armed = connection.armedDeadline, armed <= due { return }
        connection.armedDeadline = due
        timers.push(.init(deadline: due, slot: connection.slot, generation: connection.generation))
    }

    private func deadline(of connection: Connection) -> Int64? {
        switch connection.phase {
        case .connecting: return connection.retryAt ?? connection.connectDeadline
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
            case .connecting where connection.retryAt != nil:
                connection.retryAt = nil
                connect(connection)
            case .connecting:
                let seconds = Double(engine.options.connectTimeout) / 1000
                connectFailed(
                    connection, "connect to \(connection.remoteAddress!) timed out after \(seconds) s", .timeout)
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
    private func outOfResources(_ operation: String, _ error: Errno) {
        resources.trimPipes()
        meter?.acceptPaused(.noDescriptor)
        if !engine.exhausted.exchange(true, ordering: .relaxed) {
            Log.warning("\(operation) failed: \(error); accepting pauses until descriptors are free")
        }
        pauseAccepting(for: 100)
    }

    /// A whole connection, both sockets, could be had again: the episode is over.
    private func descriptorsAvailable() {
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

    private func closeAllConnections() {
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
                Log.notice("statistics: \(engine.statistics.snapshot())\(engine.loadPerThread)")
            case SIGUSR2:
                prepareHandOver(slots: Int(value))
            default:
                Log.info("signal \(signal) ignored")
            }
        }
    }
}
