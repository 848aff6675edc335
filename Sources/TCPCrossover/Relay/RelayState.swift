/// The relay of one connection, both directions, as a value: `advance` moves bytes through a `RelayIO` and says
/// what the driver must do next. The end conditions:
///
/// - both directions passed their end of stream on (FIN both ways): the connection is complete, close it; the
///   second FIN is left to that close (see `Direction.pump`), so the driver must close both sockets, without a
///   reset, when `advance` says `.finished`;
/// - a call failed on one side (a reset, a timeout) before that side had ended its stream: abort the other side
///   too, since what that side sent is cut short;
/// - a side failed after it had ended its stream (its FIN came first): the direction from it ended cleanly and is
///   delivered in full, with its FIN; the direction towards it is abandoned (`Direction.abandon`). If that lost
///   bytes, the other side must learn it: once the direction from the failed side has finished, the connection
///   fails with a reset, which the driver sends only when the other side has acknowledged every byte sent to it
///   (`.failedOnceAcknowledged`), so that the reset never overtakes any of them. If it lost nothing and the
///   other side ends its stream too, the connection is complete as usual;
/// - otherwise wait for readiness, or come back at once when a direction used up its budget.
public struct RelayState {
    // What `advance` reads on every turn first, then the two directions (see `Direction` for why the order).
    public var readiness = Readiness()
    /// The side whose end of stream came first: who closed.
    public private(set) var firstToEnd: Side?
    /// The side whose socket failed after it had ended its stream, and how.
    public private(set) var failedAfterEnd: Failure?
    /// A failure the driver found on a socket (SO_ERROR), for the next `advance` to judge.
    private var reportedFailure: Failure?
    public private(set) var clientToServer = Direction(from: .client, to: .server)
    public private(set) var serverToClient = Direction(from: .server, to: .client)

    public init() {}

    public enum Step: Equatable, Sendable {
        case waiting
        case moreWork
        case finished
        case failed(Side, Errno)
        /// `Side` failed after ending its stream, and bytes towards it were lost; everything it sent has been passed
        /// on. Reset the connection once the other side has acknowledged every byte sent to it
        /// (`RelayIO.unacknowledgedBytes` is 0); until then, go on advancing it when its sockets are ready.
        case failedOnceAcknowledged(Side, Errno)
    }

    /// A call on `side` failed with `errno`.
    public struct Failure: Equatable, Sendable {
        public let side: Side
        public let errno: Errno
    }

    /// Tells the relay that `side`'s socket has failed with `errno` (its pending error, SO_ERROR), when epoll
    /// reported an error that no call has run into; the next `advance` acts on it.
    public mutating func reportFailure(of side: Side, _ errno: Errno) {
        reportedFailure = Failure(side: side, errno: errno)
    }

    public mutating func advance<IO: RelayIO>(_ io: inout IO, budget: Int) -> Step {
        // A failure that leaves the connection going stops a direction's turn short: come back for the rest.
        var survivedFailure = false
        if let reported = reportedFailure {
            reportedFailure = nil
            if let step = failed(reported.side, reported.errno, inReceive: false, &io) { return step }
        }
        // A direction with nothing to do is left out (see `Direction.hasWork`); most events are about one.
        let upstream =
            clientToServer.hasWork(readiness)
            ? clientToServer.pump(
                &io, &readiness, budget: budget,
                closeFollowsEnd: serverToClient.finished && serverToClient.lostBytes == 0) : .idle
        if case .failed(let side, let errno) = upstream {
            if let step = failed(side, errno, inReceive: side == .client, &io) { return step }
            survivedFailure = true
        }
        let downstream =
            serverToClient.hasWork(readiness)
            ? serverToClient.pump(
                &io, &readiness, budget: budget,
                closeFollowsEnd: clientToServer.finished && clientToServer.lostBytes == 0) : .idle
        if case .failed(let side, let errno) = downstream {
            if let step = failed(side, errno, inReceive: side == .server, &io) { return step }
            survivedFailure = true
        }

        if firstToEnd == nil {
            // When both ended in the same turn, the client's end was read first.
            if clientToServer.sourceEnded {
                firstToEnd = .client
            } else if serverToClient.sourceEnded {
                firstToEnd = .server
            }
        }
        if let failure = failedAfterEnd {
            // Everything the failed side sent is out, with its FIN: the other side may learn of the loss now.
            let delivered = failure.side == .client ? clientToServer.finished : serverToClient.finished
            let lost = clientToServer.lostBytes + serverToClient.lostBytes > 0
            if delivered && lost { return .failedOnceAcknowledged(failure.side, failure.errno) }
        }
        if clientToServer.finished && serverToClient.finished { return .finished }
        if upstream == .moreWork || downstream == .moreWork || survivedFailure { return .moreWork }
        return .waiting
    }

    /// Judges a failure on `side`: nil when the connection goes on, because `side` had ended its stream (the
    /// direction towards it is abandoned), otherwise the step that ends the connection. `inReceive`: the failed call
    /// read from `side`. A receive reports a FIN that came before an error (recv(2) returns 0 for it, and the error
    /// only after), so a receive that fails says the stream was cut short. Any other call (a send, SO_ERROR) takes
    /// the error away, after which a receive returns 0 whether or not a FIN came: then the FIN must be known already,
    /// read, reported by epoll without an error, or told by EPIPE (the error a reset leaves on a socket whose peer had
    /// sent its FIN: TCP's CLOSE_WAIT state).
    private mutating func failed<IO: RelayIO>(_ side: Side, _ errno: Errno, inReceive: Bool, _ io: inout IO) -> Step? {
        if let failure = failedAfterEnd {
            // The same socket again (a later call, or SO_ERROR after a call took the error): judged already.
            return failure.side == side ? nil : .failed(side, errno)
        }
        let sourceEnded = side == .client ? clientToServer.sourceEnded : serverToClient.sourceEnded
        let ended = sourceEnded || (!inReceive && (readiness[side].endReported || errno == .brokenPipe))
        guard ended else { return .failed(side, errno) }
        failedAfterEnd = Failure(side: side, errno: errno)
        let unacknowledged = io.unacknowledgedBytes(side)
        if side == .client {
            serverToClient.abandon(&io, unacknowledged: unacknowledged)
        } else {
            clientToServer.abandon(&io, unacknowledged: unacknowledged)
        }
        return nil
    }

    /// Puts `header` (a PROXY protocol header, or nothing), then `received` (what the client sent before the relay
    /// began: read at accept), before anything else the client sends: they are the first the server receives. The
    /// header does not count as relayed bytes. Call before the first turn.
    public mutating func sendFirst<IO: RelayIO>(header: [UInt8], received: UnsafeRawBufferPointer, _ io: inout IO) {
        clientToServer.hold(header: header, received: received, &io)
    }

    /// Whether the server is on this machine: what it sends is then taken into a receive buffer that follows the
    /// flow (see `Direction.boundsSourceBuffer`), so that a client that stops reading leaves the server's data in
    /// the server's own send buffer. Said at each connect attempt.
    public mutating func serverIsOnThisMachine(_ onThisMachine: Bool = true) {
        serverToClient.boundsSourceBuffer = onThisMachine
    }

    /// `--splice no`: both directions copy every byte, and never take a pipe (one handed over with bytes in it is
    /// emptied first).
    public mutating func copyOnly() {
        clientToServer.copyOnly()
        serverToClient.copyOnly()
    }

    /// What a relay is when neither direction holds bytes and no failure is being judged: the two directions'
    /// snapshots and who ended first. A process that stops hands its connections over with it (see `StoredConnection`)
    /// and the next one goes on from there with `init(restoring:)`. Readiness is not part of it: the driver learns it
    /// again from epoll, which reports a socket's current state when it is registered.
    public struct Snapshot: Equatable, Sendable {
        public var clientToServer: Direction.Snapshot
        public var serverToClient: Direction.Snapshot
        public var firstToEnd: Side?

        public init(clientToServer: Direction.Snapshot, serverToClient: Direction.Snapshot, firstToEnd: Side?) {
            self.clientToServer = clientToServer
            self.serverToClient = serverToClient
            self.firstToEnd = firstToEnd
        }
    }

    /// The relay's snapshot; nil while a direction holds bytes outside its pipe (the driver goes on relaying until
    /// it does not), or after a side failed (the connection is near its end, and ends in this process). The pipes
    /// that hold bytes go with it (`detachPipesInTransit`).
    public var snapshot: Snapshot? {
        guard failedAfterEnd == nil, reportedFailure == nil, let up = clientToServer.snapshot,
            let down = serverToClient.snapshot
        else { return nil }
        return Snapshot(clientToServer: up, serverToClient: down, firstToEnd: firstToEnd)
    }

    /// A relay that goes on from `snapshot`, with the pipes that hold its directions' `pipeBytes`. Both sockets are
    /// taken as readable and writable: the first calls find out, and a call that finds nothing clears the flag
    /// until epoll reports the socket again.
    public init(restoring snapshot: Snapshot, upstreamPipe: PipeHandle? = nil, downstreamPipe: PipeHandle? = nil) {
        clientToServer = Direction(
            from: .client, to: .server, restoring: snapshot.clientToServer, pipe: upstreamPipe)
        serverToClient = Direction(
            from: .server, to: .client, restoring: snapshot.serverToClient, pipe: downstreamPipe)
        firstToEnd = snapshot.firstToEnd
        readiness.client.readable = true
        readiness.client.writable = true
        readiness.server.readable = true
        readiness.server.writable = true
    }

    /// For a hand-over: moves bytes held in copy buffers into pipes, so that a snapshot can be taken (see
    /// `Direction.moveHeldBytesIntoPipe`).
    public mutating func moveHeldBytesIntoPipes<IO: RelayIO>(_ io: inout IO) {
        clientToServer.moveHeldBytesIntoPipe(&io)
        serverToClient.moveHeldBytesIntoPipe(&io)
    }

    /// Lets go of the pipes that hold bytes, client to server and server to client, for a hand-over with the
    /// snapshot taken just before.
    public mutating func detachPipesInTransit() -> (upstream: PipeHandle?, downstream: PipeHandle?) {
        (clientToServer.detachPipeInTransit(), serverToClient.detachPipeInTransit())
    }

    /// Bytes delivered from the client to the server, and from the server to the client.
    public var bytes: (up: UInt64, down: UInt64) { (clientToServer.bytes, serverToClient.bytes) }

    /// Gives back both directions' pipes and buffers.
    public mutating func releaseResources<IO: RelayIO>(_ io: inout IO) {
        clientToServer.releaseResources(&io)
        serverToClient.releaseResources(&io)
    }

    public var holdsResources: Bool { clientToServer.holdsResources || serverToClient.holdsResources }
}
