/// Everything the command line decides, in the core's terms.
public struct Configuration: Sendable, Equatable {
    /// Addresses to listen on (standalone mode); empty when the service manager passes the sockets.
    public var locals: [Endpoint] = []
    /// Where connections are relayed to.
    public var remote: Endpoint
    public var pidfile: String?
    /// Stay in the foreground and log to standard error, instead of going into the background.
    public var foreground = false
    /// Foreground, with a line per event.
    public var debug = false
    /// IPv6 listeners also accept IPv4 clients (IPV6_V6ONLY off).
    public var dualStack = false
    public var relay = RelayOptions()
    /// Exit after this long without a connection, in milliseconds, when serving listeners (`--exit-idle-time`).
    public var exitIdleTime: Int64?
    /// Connections relayed at once; nil derives it from the descriptor limit (`--max-connections`).
    public var maximumConnections: Int?
    /// The user and group to run as once the sockets are bound (`--user`, `--group`).
    public var user: String?
    public var group: String?

    public init(remote: Endpoint) {
        self.remote = remote
    }
}

/// The version the command reports.
public let tcpCrossoverVersion = "0.1.0"
