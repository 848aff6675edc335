/// One relayed connection, owned by the event loop that accepted it: its two sockets, the relay state, and what
/// its log line needs. The loop closes both descriptors exactly once, in `EventLoop.finish`.
final class Connection {
    enum Phase {
        /// Connecting to the remote: `connectPhase` decides.
        case connecting
        case relaying
    }

    /// Why the connection ended, for its log line.
    enum Ending: Equatable {
        /// Both sides sent their end of stream; `Side` sent it first.
        case completed(first: Side?)
        /// A call on `side` failed: a reset, or an error such as a keepalive timeout.
        case failed(Side, Errno)
        /// No remote address could be connected; what each one did.
        case connectFailed(ConnectFailureReport)
        /// `--allow`/`--deny` refused the client before any connection to the remote; the rule that refused it.
        case refused(Refusal, String)
        /// The client's block was over its limit or rate (`--max-connections-per-client`,
        /// `--max-new-connections-per-client`).
        case refusedForClient(ClientBlock, ClientRefusal)
        case idleTimeout
        case shutdown

        /// The ending's token in the fixed vocabulary of the log line and the metrics.
        var end: ConnectionEnd {
            switch self {
            case .completed(.client): .clientClosed
            case .completed(.server): .serverClosed
            case .completed(nil): .closed
            case .failed(let side, let errno): ConnectionEnd(failedOn: side, errno)
            case .connectFailed: .connectFailed
            case .refused, .refusedForClient: .refused
            case .idleTimeout: .idleTimeout
            case .shutdown: .shutdown
            }
        }
    }

    let slot: Int32
    let generation: UInt32
    let client: CInt
    var server: CInt = -1
    var phase = Phase.connecting
    // What every event reads or writes comes first, beside the slot and generation that `dispatch` checks: with
    // thousands of connections a turn finds its connection out of the cache, and these then share its first line.
    /// The connection is on the loop's list of connections to come back to.
    var queued = false
    /// The client's socket is watched for room to write (EPOLLOUT), since a write found it full once.
    var watchesClientOutput = false
    /// Bytes the client sent before the connect are held for the server: the connect delays its handshake's ACK to
    /// send it with them (see `EventLoop.readFirstBytes`).
    var firstBytesHeld = false
    /// `serverAttempt`'s bits in the events of its socket (`EventTag.attemptBits`): `dispatch` compares them with
    /// those of every event of the server's socket.
    private(set) var serverAttemptBits: UInt8 = 0
    var lastActivity: Int64
    /// Bytes each way already added to the process's figures; a change means activity.
    var accountedUp: UInt64 = 0
    var accountedDown: UInt64 = 0
    var relay = RelayState()
    let service: Int
    /// The connect attempt whose socket `server` is.
    var serverAttempt: Int {
        get { serverAttemptNumber }
        set {
            serverAttemptNumber = newValue
            serverAttemptBits = UInt8(EventTag.attemptBits(newValue))
        }
    }
    private var serverAttemptNumber = 0
    /// The connect phase: which addresses to try, in which order, until when (see `EventLoop.connect`). Out of line
    /// and only while the connection connects: inline, its 136 bytes would stay with every relaying and idle
    /// connection, a sixth of what one costs the relay.
    var connecting: Connecting?
    /// When the connect phase's timer is due.
    var connectTimer: Int64?
    /// The sockets of connect attempts in flight beside `serverAttempt`'s (Happy Eyeballs), whose events carry their
    /// attempt in the tag (see `EventTag.make(attempt:)`).
    var otherAttempts: [(attempt: Int, fd: CInt)] = []
    let clientAddress: SocketAddress
    let localAddress: SocketAddress
    var remoteAddress: SocketAddress?
    let startedAt: Int64
    /// When keepalive is set on the socket to the server (see `EventLoop.keepaliveDelay`); nil once it is, or once
    /// the server has ended its stream (see `EventLoop.stopKeepalive`).
    var keepaliveDue: Int64?
    /// Keepalive is on on the socket to the server.
    var keepaliveOnServer = false
    /// When to ask again whether the client or the server has acknowledged everything sent to it, for a connection
    /// that waits to reset it (`RelayState.Step.failedOnceAcknowledged`).
    var acknowledgementCheckAt: Int64?
    /// The deadline of this connection's entry in the loop's timer heap; nil when it has none. Other entries for
    /// it (pushed before its deadline moved earlier) are stale and skipped.
    var armedDeadline: Int64?
    /// The client block the connection is counted in (`--max-connections-per-client`,
    /// `--max-new-connections-per-client`), until `EventLoop.finish` gives the count back.
    var clientBlock: ClientBlock?
    /// A server on this machine was connected to with the interface's segments: the connection holds a place in
    /// `Engine.wideSegments` until `EventLoop.forget` gives it back.
    var wideSegments = false

    /// The connect phase of a connection that is connecting (`Connection.connecting`).
    final class Connecting {
        var phase: ConnectPhase

        init(_ phase: ConnectPhase) { self.phase = phase }
    }

    init(
        slot: Int32,
        generation: UInt32,
        service: Int,
        client: CInt,
        clientAddress: SocketAddress,
        localAddress: SocketAddress,
        now: Int64,
        startedAt: Int64? = nil
    ) {
        self.slot = slot
        self.generation = generation
        self.service = service
        self.client = client
        self.clientAddress = clientAddress
        self.localAddress = localAddress
        self.startedAt = startedAt ?? now
        self.lastActivity = now
    }

    /// The one line logged when the connection ends: client, local and remote address, bytes each way, duration,
    /// and how it ended: `end=` and a token of `ConnectionEnd`, then for errors and refusals `: ` and the detail.
    /// Built as bytes: it is written for every connection.
    func summary(_ ending: Ending, now: Int64, into line: inout LineBuilder) {
        line.append(clientAddress)
        line.append(" -> ")
        line.append(localAddress)
        line.append(" -> ")
        if let remoteAddress { line.append(remoteAddress) } else { line.append("-") }
        let (up, down) = relay.bytes
        line.append(": ")
        line.append(up)
        line.append(" bytes up, ")
        line.append(down)
        line.append(" bytes down, ")
        line.appendSeconds(milliseconds: now - startedAt)
        line.append(" s, end=")
        line.append(ending.end.token)
        switch ending {
        case .failed(_, let errno):
            line.append(": ")
            line.append(errno.description)
        case .connectFailed(let failure):
            line.append(": ")
            line.append(failure.description)
        case .refused(_, let reason):
            line.append(": ")
            line.append(reason)
        case .refusedForClient(let block, let refusal):
            line.append(": client block ")
            line.append(block.description)
            if case .limit = refusal { line.append(" reached ") } else { line.append(" went over ") }
            line.append(refusal.description)
        case .completed, .idleTimeout, .shutdown:
            break
        }
    }
}
