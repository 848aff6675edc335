import CLinux
import Glibc

/// Accepting: taking connections from a listener, handing some over to a less loaded loop, and admitting each
/// (access rules, per-client limits, the client's first bytes) before its connect phase (`EventLoop+Connect.swift`).
/// How accepting pauses (the connection limit, running out of descriptors) is in `EventLoop.swift`.
extension EventLoop {
    func acceptConnections(from index: Int) {
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
    func takeHandedOver(closing: Bool) -> Bool {
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
    func admit(_ incoming: IncomingConnection) {
        let (fd, peer, local, service) = (incoming.fd, incoming.peer, incoming.local, incoming.service)
        tally.add(.accepted, 1)
        meter?.accepted(service)
        let connection = place { slot, generation in
            Connection(
                slot: slot, generation: generation, service: service, client: fd,
                clientAddress: peer, localAddress: local, now: now)
        }
        if Log.enabled(.debug) { Log.debug("accepted \(peer) on \(local)") }
        let access = engine.settings[connection.service].options.access
        if !access.isEmpty, let reason = access.refusal(of: peer) {
            engine.statistics.refusedByAccessRule.add(1, ordering: .relaxed)
            finish(connection, .refused(.accessRule, reason))
            return
        }
        if let limits = engine.clientLimits[connection.service] {
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
        connect(connection)
    }

    /// Reads what the client sent with its handshake, if anything (an HTTP request, usually): it is held for the
    /// server, after the PROXY protocol header if there is one, and the connect to the server then delays its
    /// handshake's last ACK to send it with these bytes (TCP_QUICKACK off, as HAProxy's tcp-smart-connect), a
    /// segment fewer and one wake-up fewer for the server. A client that waits for the server to speak first (SMTP)
    /// costs one recv that finds nothing. Returns false when the client's socket failed: the connection is over.
    private func readFirstBytes(_ connection: Connection) -> Bool {
        let header =
            engine.settings[connection.service].options.proxyProtocol?.header(
                source: connection.clientAddress, destination: connection.localAddress) ?? []
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
}
