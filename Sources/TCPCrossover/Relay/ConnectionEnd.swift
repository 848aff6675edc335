import Glibc

/// How a connection ended, in the fixed vocabulary of its log line (`end=client-closed`) and of the `end` label of
/// the metrics: a log search or an alert can rely on these tokens; the detail after them (an error text, the rule
/// that refused a client) is for people and may change.
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

    /// The token of the log line and the metrics' label value.
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

/// Why a client was refused before any connection to the remote: the `reason` label of
/// `tcp_crossover_connections_refused_total`.
public enum Refusal: Int, CaseIterable, Sendable {
    /// `--allow` or `--deny`.
    case accessRule
    /// The client's address block holds its limit of connections (`--max-connections-per-client`).
    case clientLimit
    /// The client's address block opened connections faster than it may (`--max-new-connections-per-client`).
    case clientRate

    public var token: StaticString {
        switch self {
        case .accessRule: "access-rule"
        case .clientLimit: "client-limit"
        case .clientRate: "client-rate"
        }
    }
}

/// Why one connect to a remote address failed: the `reason` label of `tcp_crossover_connect_failures_total`.
public enum ConnectFailure: Int, CaseIterable, Sendable {
    /// The remote answered with a reset: nothing listens there.
    case refused
    /// No answer within `--connect-timeout` (or the kernel's own timeout).
    case timeout
    /// No route to the address, or the network or host is down.
    case unreachable
    /// This process had no descriptor (or memory) for the socket within the connect timeout.
    case noDescriptor
    /// Anything else, such as a `--source` address that cannot be bound.
    case other

    public var token: StaticString {
        switch self {
        case .refused: "refused"
        case .timeout: "timeout"
        case .unreachable: "unreachable"
        case .noDescriptor: "no-descriptor"
        case .other: "other"
        }
    }

    /// The class of a connect's errno.
    public init(_ errno: Errno) {
        switch errno.rawValue {
        case ECONNREFUSED: self = .refused
        case ETIMEDOUT: self = .timeout
        case EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN, ENONET: self = .unreachable
        default: self = errno.isResourceExhaustion ? .noDescriptor : .other
        }
    }
}
