import Glibc

/// How a connection ended, in the fixed vocabulary of its log line (`end=client-closed`): a log search or an alert
/// can rely on these tokens; the detail after them (an error text, the rule that refused a client) is for people
/// and may change.
public enum ConnectionEnd: Int, CaseIterable, Sendable {
    /// Both sides ended their stream cleanly; the client ended its side first.
    case clientClosed
    /// Both sides ended their stream cleanly; the server ended its side first.
    case serverClosed
    /// Both sides ended their stream cleanly, in the same moment.
    case closed
    /// The client's side was reset (or its socket found no longer connected).
    case clientReset
    /// The server's side was reset (or its socket found no longer connected).
    case serverReset
    /// Another error on the client's side, such as a keepalive timeout.
    case clientError
    /// Another error on the server's side, such as a keepalive timeout.
    case serverError
    /// No remote address could be connected to.
    case connectFailed
    /// The client was refused before any connection to the remote: an access rule or a per-client limit.
    case refused
    /// No bytes either way for `--idle-timeout`.
    case idleTimeout
    /// Still open when the relay stopped.
    case shutdown

    /// The token of the log line.
    public var token: StaticString {
        switch self {
        case .clientClosed: "client-closed"
        case .serverClosed: "server-closed"
        case .closed: "closed"
        case .clientReset: "client-reset"
        case .serverReset: "server-reset"
        case .clientError: "client-error"
        case .serverError: "server-error"
        case .connectFailed: "connect-failed"
        case .refused: "refused"
        case .idleTimeout: "idle-timeout"
        case .shutdown: "shutdown"
        }
    }

    /// Whether the connection was relayed to its end, each side closing cleanly.
    public var isClean: Bool { self == .clientClosed || self == .serverClosed || self == .closed }

    /// The end of a connection that `side`'s socket failed with `errno`: a reset when the peer reset it (or the
    /// socket is found no longer connected, which a reset leaves behind), otherwise an error.
    public init(failedOn side: Side, _ errno: Errno) {
        let reset = errno == .connectionReset || errno == .brokenPipe || errno == Errno(ENOTCONN)
        switch (side, reset) {
        case (.client, true): self = .clientReset
        case (.client, false): self = .clientError
        case (.server, true): self = .serverReset
        case (.server, false): self = .serverError
        }
    }
}

/// Why a client was refused before any connection to the remote.
public enum Refusal: Int, CaseIterable, Sendable {
    /// `--allow` or `--deny`.
    case accessRule
    /// The client's address block holds its limit of connections.
    case clientLimit

    public var token: StaticString {
        switch self {
        case .accessRule: "access-rule"
        case .clientLimit: "client-limit"
        }
    }
}
