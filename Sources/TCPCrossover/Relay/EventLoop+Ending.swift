/// The end of a connection, whatever ended it: its resources given back, its sockets closed (with a reset unless
/// both sides ended cleanly), its client's block released, and its log line.
extension EventLoop {
    /// Ends a connection: gives back its pipes and buffers, closes both sockets (with a reset unless both sides
    /// ended cleanly), and logs its line.
    func finish(_ connection: Connection, _ ending: Connection.Ending) {
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
        if engine.settings[connection.service].options.logConnections {
            logBatch.info { connection.summary(ending, now: now, into: &$0) }
        }
    }

    /// Closes a connection's sockets (as they are set: `finish` sets a reset first where one is due) and frees its
    /// slot, its client block and its count. A connection handed over to the next process (`handOver`) ends here
    /// too, without a line: systemd's duplicates keep its sockets open.
    func forget(_ connection: Connection) {
        var io = SocketIO(client: connection.client, server: connection.server, resources: resources)
        if connection.relay.holdsResources { connection.relay.releaseResources(&io) }
        Syscall.close(connection.client)
        closeServer(connection)
        if !connection.otherAttempts.isEmpty { closeOtherAttempts(connection) }
        if let block = connection.clientBlock {
            engine.clientLimits[connection.service]?.release(block, now: now)
            connection.clientBlock = nil
        }
        if connection.wideSegments {
            engine.wideSegments.release()
            connection.wideSegments = false
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
}
