import CLinux
import Glibc

/// The connect phase's driver: the event loop feeds a connection's `ConnectPhase` its inputs (start, a socket's
/// connect finished, the timer) and performs the actions it returns. What happens when the backend refuses, does not
/// answer or is out of reach is decided in `ConnectPhase`; here are the system calls.
extension EventLoop {
    /// Gives a socket whose peer is on this machine the algorithm of `--loopback-congestion-control`, if any.
    func useLoopbackCongestionControl(_ fd: CInt) {
        guard let algorithm = engine.options.loopbackCongestionControl else { return }
        Syscall.useCongestionControl(fd, algorithm)
    }

    /// Starts the connect phase of an admitted connection: the service's addresses, failed ones last.
    func connect(_ connection: Connection) {
        let options = engine.settings[connection.service].options
        connection.connecting = Connection.Connecting(
            ConnectPhase(
                targets: engine.settings[connection.service].pool.candidates(now: now), sources: options.sources,
                timing: ConnectPhase.Timing(attemptTimeout: options.connectTimeout, deadline: options.connectDeadline)))
        drive(connection, .start(now: now))
    }

    /// An event on the socket of a connect attempt: writable means connected, an error or hang-up means failed
    /// (SO_ERROR says why; a success needs no call to learn it).
    func connectProgressed(_ connection: Connection, attemptTag: Int, events: UInt32) {
        let attempt: Int
        let fd: CInt
        if connection.server >= 0 && EventTag.attemptBits(connection.serverAttempt) == attemptTag {
            (attempt, fd) = (connection.serverAttempt, connection.server)
        } else if let other = connection.otherAttempts.first(where: { EventTag.attemptBits($0.attempt) == attemptTag })
        {
            (attempt, fd) = other
        } else {
            return  // An attempt closed earlier in this batch of events.
        }
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
            let error = Syscall.pendingError(fd) ?? .connectionRefused
            drive(connection, .failed(attempt, AttemptError(.connect, error), now: now))
        } else if events & EPOLLOUT.rawValue != 0 {
            // The socket may have the server's first bytes already (an SMTP greeting, urgent data, its end): this
            // edge is the only one that says so.
            noteReadiness(connection, .server, events)
            drive(connection, .connected(attempt, now: now))
        }
    }

    /// The connect phase's timer is due.
    func connectTimerFired(_ connection: Connection) {
        connection.connectTimer = nil
        drive(connection, .timerFired(now: now))
    }

    /// Feeds `input` to the connection's connect phase and performs the actions, and those of the inputs that the
    /// actions themselves produce (a connect that fails or succeeds at once).
    private func drive(_ connection: Connection, _ input: ConnectPhase.Input) {
        guard let connecting = connection.connecting else { return }
        var actions = connectActions
        connectActions = []
        defer {
            actions.removeAll(keepingCapacity: true)
            connectActions = actions
            // Relaying, or given up: the phase is over, and its memory goes.
            if connecting.phase.state != .connecting && connecting.phase.state != .idle { connection.connecting = nil }
        }
        var pending: ConnectPhase.Input? = input
        while let input = pending {
            pending = nil
            // Empty at first (the last drive left it so): removeAll is a call of some 60 instructions even then.
            if !actions.isEmpty { actions.removeAll(keepingCapacity: true) }
            connecting.phase.processInput(input, into: &actions)
            for action in actions {
                switch action {
                case .open(let attempt, let address, let source):
                    // One attempt starts per input at most, so one outcome at most waits here.
                    assert(pending == nil, "two attempts opened for one input")
                    pending = open(connection, attempt, address, source: source)
                case .close(let attempt, let failure):
                    if let failure {
                        let target = connecting.phase.targets[attempt]
                        meter?.connectFailed(connection.service, remote: target.address, ConnectFailure(failure))
                        if Log.enabled(.debug) {
                            Log.debug(
                                ConnectFailureReport.describe(
                                    target, failure,
                                    deadline: engine.settings[connection.service].options.connectDeadline))
                        }
                    }
                    close(connection, attempt)
                case .armTimer(let due):
                    connection.connectTimer = due
                    armTimer(connection)
                case .backOff(let address):
                    engine.settings[connection.service].pool.failed(address, now: now)
                case .relay(let attempt, let address):
                    relay(connection, attempt, address)
                case .giveUp(let failure):
                    // Out of descriptors until the deadline: counted here, the waits closed no attempt that failed.
                    for (target, attempt) in failure.attempts {
                        if case .error(let error) = attempt, error.isResourceExhaustion {
                            meter?.connectFailed(connection.service, remote: target.address, .noDescriptor)
                        }
                    }
                    finish(connection, .connectFailed(failure))
                }
            }
        }
    }

    /// Opens the attempt's socket, binds it to `source` and starts its connect. Returns the input the outcome
    /// makes, or nil while the connect is in progress.
    private func open(_ connection: Connection, _ attempt: Int, _ address: SocketAddress, source: SocketAddress?)
        -> ConnectPhase.Input?
    {
        let fd: CInt
        do throws(Errno) {
            fd = try Syscall.streamSocket(family: address.addressFamily)
        } catch {
            if error.isResourceExhaustion { outOfResources("socket", error) }
            return .failed(attempt, AttemptError(.socket, error), now: now)
        }
        // The log line of a connection that is not relayed names the last address tried.
        connection.remoteAddress = address
        if connection.server < 0 {
            connection.server = fd
            connection.serverAttempt = attempt
        } else {
            connection.otherAttempts.append((attempt, fd))
        }
        if engine.exhausted.load(ordering: .relaxed) { descriptorsAvailable() }
        var operation = AttemptError.Operation.setsockopt
        do throws(Errno) {
            // Keepalive comes later, on connections that live long enough to need it (see `keepaliveDue`).
            try Syscall.setConnectionOptions(fd, keepalive: nil)
            // Nil for a remote that is not a loopback address and was not looked at lately: the connect below
            // tells whether it is this machine's own.
            let onThisMachine = address.isLoopback ? true : ownAddresses.isOnThisMachine(address, now: now)
            if onThisMachine == true {
                useLoopbackCongestionControl(fd)
                // Announced in the SYN: a server whose address was not known to be this machine's keeps its own.
                let segment = engine.options.loopbackMSS.segmentSize(wide: {
                    // Once per connection, whatever the attempts.
                    if !connection.wideSegments { connection.wideSegments = engine.wideSegments.admit(now: now) }
                    return connection.wideSegments
                })
                if let segment { Syscall.limitSegmentSize(fd, segment) }
            }
            if connection.firstBytesHeld { try Syscall.setQuickAck(fd, false) }
            if let source {
                operation = .bind
                try Syscall.bindForConnect(fd, to: source)
            }
            operation = .register
            try Syscall.epollControl(
                epoll, EPOLL_CTL_ADD, fd, events: Self.connectionEvents,
                data: EventTag.make(
                    EventTag.server, index: Int(connection.slot), generation: connection.generation, attempt: attempt))
            operation = .connect
            let connectedAtOnce = try Syscall.connect(fd, to: address)
            if onThisMachine == nil, engine.options.loopbackCongestionControl != nil,
                let local = try? Syscall.localAddress(fd), ownAddresses.learn(address, source: local, now: now)
            {
                useLoopbackCongestionControl(fd)
            }
            return connectedAtOnce ? .connected(attempt, now: now) : nil
        } catch {
            if error.isResourceExhaustion { outOfResources(operation.rawValue, error) }
            return .failed(attempt, AttemptError(operation, error), now: now)
        }
    }

    /// Closes the attempt's socket, if it has one.
    private func close(_ connection: Connection, _ attempt: Int) {
        if connection.server >= 0 && connection.serverAttempt == attempt {
            closeServer(connection)
        } else if let index = connection.otherAttempts.firstIndex(where: { $0.attempt == attempt }) {
            Syscall.close(connection.otherAttempts.remove(at: index).fd)
        }
    }

    /// The attempt connected (the others are closed): its socket becomes the connection's socket to the server.
    private func relay(_ connection: Connection, _ attempt: Int, _ address: SocketAddress) {
        if connection.server < 0 || connection.serverAttempt != attempt,
            let index = connection.otherAttempts.firstIndex(where: { $0.attempt == attempt })
        {
            closeServer(connection)
            (connection.serverAttempt, connection.server) = connection.otherAttempts.remove(at: index)
        }
        connection.remoteAddress = address
        connection.connectTimer = nil
        connection.phase = .relaying
        // A server on this machine gets a receive buffer that follows the flow (`Direction.boundsSourceBuffer`).
        connection.relay.serverIsOnThisMachine(
            address.isLoopback || ownAddresses.isOnThisMachine(address, now: now) == true)
        if !engine.settings[connection.service].options.splice { connection.relay.copyOnly() }
        meter?.connected(connection.service, after: now - connection.startedAt)
        connection.relay.readiness.server.writable = true
        connection.lastActivity = now
        // Not for a server whose end of stream came with the connect (see `stopKeepalive`).
        let keepalive = engine.settings[connection.service].options.keepalive
        if keepalive != nil && !connection.relay.readiness.server.endReported {
            connection.keepaliveDue = now + Self.keepaliveDelay
        }
        engine.settings[connection.service].pool.succeeded(address)
        if Log.enabled(.debug) {
            Log.debug("relaying \(connection.clientAddress) to \(address)")
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

    /// Closes the socket to the server, and those of other connect attempts still open.
    func closeServer(_ connection: Connection) {
        if connection.server >= 0 {
            Syscall.close(connection.server)
            connection.server = -1
        }
    }

    /// Closes the sockets of connect attempts beside the one in `server` (a connection that ends while connecting).
    func closeOtherAttempts(_ connection: Connection) {
        for other in connection.otherAttempts { Syscall.close(other.fd) }
        connection.otherAttempts.removeAll()
    }
}
