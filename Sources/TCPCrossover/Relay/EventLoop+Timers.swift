/// Timers: one heap of deadlines per loop (connect timeouts, idle timeouts, keepalive, acknowledgement checks),
/// and the loop's own (accepting resumes, the stop's deadline, periodic work).
extension EventLoop {
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
            let idle = engine.settings[connection.service].options.idleTimeout.map { connection.lastActivity + $0 }
            return earlier(earlier(idle, connection.keepaliveDue), connection.acknowledgementCheckAt)
        }
    }

    /// The earlier of two times, either of which may be missing.
    private func earlier(_ first: Int64?, _ second: Int64?) -> Int64? {
        guard let first, let second else { return first ?? second }
        return min(first, second)
    }

    func runTimers() {
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
                if let keepalive = engine.settings[connection.service].options.keepalive {
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

    // MARK: keepalive

    /// How long a connection lives before keepalive is set on its socket to the server. Most connections end
    /// sooner and are spared four setsockopt(2) calls; a peer's silence is counted from the last bytes received
    /// either way. (The client's socket inherits keepalive from its listener at no cost.)
    static let keepaliveDelay: Int64 = 10_000

    /// The server has ended its stream: keepalive towards it is turned off, or never set. Probes could only find out
    /// that the server's machine has forgotten the finished connection (after `tcp_fin_timeout` once the server
    /// closed its socket) and draw a reset, while what the server sent may still be on its way to a slow client.
    /// Bytes the client sends later find out for themselves whether the server is still there. The client's socket
    /// keeps its keepalive: it tells whether a client that is still owed bytes, or still waited for, has vanished.
    func stopKeepalive(_ connection: Connection) {
        connection.keepaliveDue = nil
        guard connection.keepaliveOnServer else { return }
        connection.keepaliveOnServer = false
        do {
            try Syscall.stopKeepalive(connection.server)
        } catch {
            if Log.enabled(.debug) { Log.debug("cannot stop keepalive towards \(connection.remoteAddress!): \(error)") }
        }
    }
}
