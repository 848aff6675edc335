import CLinux
import Glibc

/// Relaying: what an event on a connection's socket says, and a turn of its relay (`RelayState`), whose result the
/// loop acts on: more work next turn, the end of the connection, or a reset once the other side has acknowledged.
extension EventLoop {
    func connectionEvent(_ connection: Connection, side: Side, events: UInt32) {
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

    /// Moves a connection's bytes for one turn and acts on the result.
    func service(_ connection: Connection) {
        var io = SocketIO(client: connection.client, server: connection.server, resources: resources)
        let step = connection.relay.advance(&io, budget: engine.options.budget)
        let (up, down) = connection.relay.bytes
        if up != connection.accountedUp || down != connection.accountedDown {
            tally.add(.bytesUp, up - connection.accountedUp)
            tally.add(.bytesDown, down - connection.accountedDown)
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

    static let inputEvents = EPOLLIN.rawValue | EPOLLPRI.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
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
}
