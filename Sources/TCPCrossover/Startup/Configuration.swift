/// An address with an optional name in front: `smtp=[::]:25`. Names tie a `--remote` to the listeners it serves:
/// the `--local` of the same name, or the socket systemd passes with that FileDescriptorName=.
public struct NamedEndpoint: Equatable, Sendable, CustomStringConvertible {
    public var name: String?
    public var endpoint: Endpoint

    public init(name: String? = nil, endpoint: Endpoint) {
        self.name = name
        self.endpoint = endpoint
    }

    /// Parses `[NAME=]ADDRESS:PORT`. A name is printable ASCII without spaces, ':' or '=', as systemd's
    /// FileDescriptorName= is.
    public init(parsing text: String, portZero: Endpoint.PortZero = .refused) throws(AddressError) {
        let bytes = Array(text.utf8)
        guard let equals = bytes.firstIndex(of: UInt8(ascii: "=")) else {
            self.init(endpoint: try Endpoint(parsing: text, portZero: portZero))
            return
        }
        let name = bytes[..<equals]
        guard !name.isEmpty, name.count <= 255, name.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != 0x3a }) else {
            throw AddressError(
                text: text, reason: "'\(String(decoding: name, as: UTF8.self))' is not a name",
                accepted: "NAME=ADDRESS:PORT with a name of letters, digits and punctuation other than ':' and '='")
        }
        let address = String(decoding: bytes[(equals + 1)...], as: UTF8.self)
        self.init(
            name: String(decoding: name, as: UTF8.self), endpoint: try Endpoint(parsing: address, portZero: portZero))
    }

    public var description: String { name.map { "\($0)=\(endpoint)" } ?? endpoint.description }
}

/// Everything the command line decides, in the core's terms.
public struct Configuration: Sendable, Equatable {
    /// Addresses to listen on (standalone mode); empty when the service manager passes the sockets.
    public var locals: [NamedEndpoint] = []
    /// Where connections are relayed to: several give failover, in order; names pick the listeners they serve.
    public var remotes: [NamedEndpoint]
    public var pidfile: String?
    /// Stay in the foreground and log to standard error, instead of going into the background.
    public var foreground = false
    /// Foreground, with a line per event.
    public var debug = false
    /// IPv6 listeners also accept IPv4 clients (IPV6_V6ONLY off).
    public var dualStack = false
    /// Warn at start when relaying to an address of this machine without PROXY protocol (off with
    /// `--no-proxy-warning`).
    public var localRemoteWarning = true
    public var relay = RelayOptions()
    /// The per-connection options of the services that have some of their own (`--proxy-protocol imap=v2`), by
    /// service name: the unnamed ones (`relay.service`) with the service's own values in their place.
    public var serviceOptions: [String: ServiceOptions] = [:]
    /// Exit after this long without a connection, in milliseconds, when serving listeners (`--exit-idle-time`).
    public var exitIdleTime: Int64?
    /// Connections relayed at once; nil derives it from the descriptor limit (`--max-connections`).
    public var maximumConnections: Int?
    /// The user and group to run as once the sockets are bound (`--user`, `--group`).
    public var user: String?
    public var group: String?
    /// Where the metrics endpoint listens (`--metrics`); nil for none, unless systemd passes a socket named
    /// `metrics`.
    public var metrics: Endpoint?

    public init(remotes: [NamedEndpoint]) {
        self.remotes = remotes
    }
}

/// The version the command reports.
public let tcpCrossoverVersion = "0.1.0"
