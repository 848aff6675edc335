/// The relay of one connection, both directions, as a value: `advance` moves bytes through a `RelayIO` and says
/// what the driver must do next. The end conditions:
///
/// - both directions passed their end of stream on (FIN both ways): the connection is complete, close it; the
///   second FIN is left to that close (see `Direction.pump`), so the driver must close both sockets, without a
///   reset, when `advance` says `.finished`;
/// - a call failed on one side (a reset, a timeout): abort the other side too;
/// - otherwise wait for readiness, or come back at once when a direction used up its budget.
public struct RelayState {
    public var readiness = Readiness()
    public private(set) var clientToServer = Direction(from: .client, to: .server)
    public private(set) var serverToClient = Direction(from: .server, to: .client)
    /// The side whose end of stream came first: who closed.
    public private(set) var firstToEnd: Side?

    public init() {}

    public enum Step: Equatable, Sendable {
        case waiting
        case moreWork
        case finished
        case failed(Side, Errno)
    }

    public mutating func advance<IO: RelayIO>(_ io: inout IO, budget: Int) -> Step {
        let upstream = clientToServer.pump(
            &io, &readiness, budget: budget, closeFollowsEnd: serverToClient.finished)
        if case .failed(let side, let errno) = upstream { return .failed(side, errno) }
        let downstream = serverToClient.pump(
            &io, &readiness, budget: budget, closeFollowsEnd: clientToServer.finished)
        if case .failed(let side, let errno) = downstream { return .failed(side, errno) }

        if firstToEnd == nil {
            // When both ended in the same turn, the client's end was read first.
            if clientToServer.sourceEnded {
                firstToEnd = .client
            } else if serverToClient.sourceEnded {
                firstToEnd = .server
            }
        }
        if clientToServer.finished && serverToClient.finished { return .finished }
        if upstream == .moreWork || downstream == .moreWork { return .moreWork }
        return .waiting
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

    /// Bytes delivered from the client to the server, and from the server to the client.
    public var bytes: (up: UInt64, down: UInt64) { (clientToServer.bytes, serverToClient.bytes) }

    /// Gives back both directions' pipes and buffers.
    public mutating func releaseResources<IO: RelayIO>(_ io: inout IO) {
        clientToServer.releaseResources(&io)
        serverToClient.releaseResources(&io)
    }

    public var holdsResources: Bool { clientToServer.holdsResources || serverToClient.holdsResources }
}
