import CLinux
import Glibc

/// Restarts that keep established connections: a connection handed over to the next process through systemd's file
/// descriptor store (`handOver`), and one taken over from the previous process (`adopt(_: AdoptedConnection)`); and
/// the slot every new connection gets (`place`).
extension EventLoop {
    /// Gives a new connection a slot and a generation, and counts it live.
    func place(_ make: (Int32, UInt32) -> Connection) -> Connection {
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
        let remote = (try? Syscall.peerAddress(adopted.server)) ?? .unspecified
        connection.remoteAddress = remote
        connection.phase = .relaying
        connection.relay = RelayState(
            restoring: stored.relay, upstreamPipe: adopted.upstreamPipe.map(resources.adoptPipe),
            downstreamPipe: adopted.downstreamPipe.map(resources.adoptPipe))
        // `--splice no` here copies a taken-over connection too. (One that copied in the process before goes on
        // copying whatever this process's setting: the snapshot does not tell `--splice no` from a source that splice
        // refused.)
        if !engine.settings[connection.service].options.splice { connection.relay.copyOnly() }
        // As `relay` after a connect: a server on this machine has its receive buffer follow the flow, and a socket to
        // it with the interface's segments holds a place in the budget of such connections, as it did before.
        if remote.isLoopback
            || (try? Syscall.localAddress(adopted.server)).map({ remote.isOnThisMachine(localEnd: $0) }) == true
        {
            connection.relay.serverIsOnThisMachine()
            if case .adaptive(let small) = engine.options.loopbackMSS,
                let segment = Syscall.advertisedSegmentSize(adopted.server), segment > small
            {
                engine.wideSegments.hold()
                connection.wideSegments = true
            }
        }
        // Only bytes moved from now on count in this process's figures.
        (connection.accountedUp, connection.accountedDown) = connection.relay.bytes
        if let limits = engine.clientLimits[connection.service],
            case .admitted(let block) = limits.admit(peer, now: now)
        {
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
        let keepalive = engine.settings[connection.service].options.keepalive
        if keepalive != nil && !stored.relay.serverToClient.sourceEnded {
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
    func handOver(_ connection: Connection) {
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
}
