/// How the relay engine behaves: sizes, timeouts and limits. The command line fills it in.
public struct RelayOptions: Sendable, Equatable {
    /// The largest pipe of a splicing direction (`--bs`): its pipe starts at `startingPipeSize` and grows towards
    /// this while the pipe holds the direction back (see `Direction`).
    public var pipeSize = 1 << 20
    /// The size a splicing direction's pipe starts with.
    public var startingPipeSize = 16 << 10
    /// The pipe memory the process may hold beyond the starting size of its pipes, in bytes (`--pipe-memory`); nil
    /// for 64 pipes of `pipeSize`, and for an unprivileged process at most half of fs.pipe-user-pages-soft.
    public var pipeMemory: Int?
    /// The size of a copy-mode receive; one of `Direction.bulkReceive` (half of it) or more switches the direction
    /// to splice. 64 KiB, the segment of the loopback interface: a response from a server on this machine arrives
    /// in one segment and goes through in one recv(2) and one send(2), where a 16 KiB receive took two of each for a
    /// 16 KiB body with its headers, and then started splicing for the tail (Benchmarks/README.md, 16 KiB
    /// responses: 1.11 to 1.23 times the floor, against 0.95 to 1.02).
    public var copyChunk = 64 << 10
    /// The per-connection settings of every service that has none of its own (the options given without a name).
    public var service = ServiceOptions()
    /// Event loops (threads); 0 means one per CPU.
    public var threads = 0
    /// Connections relayed at once; accepting pauses at the limit (`--max-connections`).
    public var maximumConnections = Int.max
    /// On SIGTERM, how long live connections may go on before they are closed, in milliseconds.
    public var shutdownTimeout: Int64 = 10_000
    /// Rounds a direction may move bytes in one turn before other connections get theirs.
    public var budget = 16
    /// How often host names among the remotes are looked up again, in milliseconds (`--resolve-interval`).
    public var resolveInterval: Int64 = 60_000
    /// How long a remote address that failed is tried last, in milliseconds.
    public var failoverBackoff: Int64 = 30_000
    /// The congestion control algorithm of the sockets whose peer is on this machine; nil leaves them the system's
    /// (`--loopback-congestion-control`, see `Syscall.useCongestionControl`).
    public var loopbackCongestionControl: CongestionControl? = .reno
    /// The largest segment a server on this machine may send (TCP_MAXSEG before connect; `--loopback-mss`, see
    /// `LoopbackSegments`).
    public var loopbackMSS = LoopbackSegments.standard

    public init() {}
}

/// What the connections of one service get: the options that may be given per service (`--proxy-protocol
/// imap=v2`), each either the service's own value or the unnamed default.
public struct ServiceOptions: Sendable, Equatable {
    /// How long one connect to a remote address may take, in milliseconds (`--connect-timeout`).
    public var connectTimeout: Int64 = 10_000
    /// How long a connection may take to reach a remote, every address and failover included, in milliseconds
    /// (`--connect-deadline`).
    public var connectDeadline: Int64 = 30_000
    /// A connection with no bytes either way for this long is closed, in milliseconds (`--idle-timeout`).
    public var idleTimeout: Int64?
    /// The PROXY protocol header to send the remote first (`--proxy-protocol`).
    public var proxyProtocol: ProxyProtocol?
    /// Addresses outgoing connections leave from, at most one per family (`--source`).
    public var sources: [SocketAddress] = []
    /// Which clients are served (`--allow`, `--deny`).
    public var access = AccessRules()
    /// TCP keepalive on both sockets of every connection, so that a vanished peer does not hold a connection
    /// forever; nil turns it off (`--keepalive`).
    public var keepalive: Keepalive? = .standard
    /// Each finished connection gets its log line (`--log-connections`); the figures are counted either way.
    public var logConnections = true
    /// Bulk data moves with splice(2) (`--splice`); false copies every byte (see `RelayState.copyOnly()`).
    public var splice = true
    /// Connections one client (an address block, see `clientPrefixes`) may have open at once; nil for no such limit
    /// (`--max-connections-per-client`).
    public var maximumConnectionsPerClient: Int?
    /// New connections one client may open, in bursts and over time; nil for no such limit
    /// (`--max-new-connections-per-client`).
    public var newConnectionRatePerClient: ConnectionRate?
    /// The address block that counts as one client for both (`--client-prefix-length`).
    public var clientPrefixes = ClientPrefixes.standard

    /// Some per-client limit applies.
    public var limitsClients: Bool { maximumConnectionsPerClient != nil || newConnectionRatePerClient != nil }

    public init() {}
}

/// A TCP congestion control algorithm, by the name the kernel knows it by (`reno`, `cubic`, `bbr`...).
public struct CongestionControl: Equatable, Sendable, CustomStringConvertible {
    /// 1 to 15 printable ASCII bytes, without spaces: what TCP_CONGESTION takes (TCP_CA_NAME_MAX is 16 with the NUL).
    public let name: String

    public init?(name: String) {
        guard (1...15).contains(name.utf8.count), name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return nil }
        self.name = name
    }

    /// Built into every kernel and allowed to unprivileged processes.
    public static let reno = CongestionControl(name: "reno")!

    public var description: String { name }
}

/// TCP keepalive timings, in seconds: probes start after `idle` seconds of silence, every `interval` seconds, and
/// the connection is dropped after `count` unanswered ones.
public struct Keepalive: Equatable, Sendable {
    public var idle: Int
    public var interval: Int
    public var count: Int

    public init(idle: Int, interval: Int, count: Int) {
        self.idle = idle
        self.interval = interval
        self.count = count
    }

    /// A dead peer is noticed after about 4 minutes (120 s + 4 × 30 s).
    public static let standard = Keepalive(idle: 120, interval: 30, count: 4)
}

/// Where the connections of one or more listeners go: a `--remote` group, named after the sockets it serves
/// (systemd's FileDescriptorName=, or the name given to `--local`), or unnamed for the others.
public struct Service: Sendable {
    public var name: String?
    public var pool: RemotePool
    /// Its per-connection settings: its own options, and the unnamed ones for the rest.
    public var options: ServiceOptions

    public init(name: String?, pool: RemotePool, options: ServiceOptions = ServiceOptions()) {
        self.name = name
        self.pool = pool
        self.options = options
    }

    /// `127.0.0.1:25` or `mail.example.org:25 (192.0.2.5:25, [2001:db8::5]:25)`, for the start line.
    public var description: String {
        let addresses = pool.addresses.map(\.description).joined(separator: ", ")
        let prefix = name.map { "\($0): " } ?? ""
        if pool.hasNames {
            return prefix + pool.endpoints.map(\.description).joined(separator: ", ") + " (\(addresses))"
        }
        return prefix + addresses
    }
}

/// A listening socket and the service its connections go to.
public struct ListeningSocket: Sendable {
    public let fd: CInt
    public let address: SocketAddress
    public let service: Int
    /// Its name: systemd's FileDescriptorName=, or the name given to `--local`.
    public let name: String?
    /// The socket took the loopback congestion control before it listened (it is bound to a loopback address), so
    /// every socket it accepts has it already (see `Syscall.useCongestionControl`).
    public let passesLoopbackCongestionControl: Bool

    public init(
        fd: CInt, address: SocketAddress, service: Int, name: String? = nil,
        passesLoopbackCongestionControl: Bool = false
    ) {
        self.fd = fd
        self.address = address
        self.service = service
        self.name = name
        self.passesLoopbackCongestionControl = passesLoopbackCongestionControl
    }
}

/// A connection accepted before the relay started: inetd's standard input, or systemd's `Accept=yes` socket.
public struct AcceptedConnection: Sendable {
    public let fd: CInt
    public let service: Int

    public init(fd: CInt, service: Int) {
        self.fd = fd
        self.service = service
    }
}
