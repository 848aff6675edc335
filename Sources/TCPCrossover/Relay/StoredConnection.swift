import Glibc

/// A relayed connection as a stopping process leaves it in systemd's file descriptor store, for the process that
/// systemd starts next (`systemctl restart`, a package upgrade): its two sockets, each stored under its own name
/// (`FDSTORE=1` with `FDNAME=`), and in the client socket's name what the sockets do not carry themselves: which
/// server socket belongs to it, its service, when it began, and the relay's state. The addresses for the log line
/// are asked of the sockets again (getpeername(2), getsockname(2)).
///
/// The names follow systemd's rules for FDNAME= (at most 255 printable ASCII characters, no `:`):
///
///     tcx-c.ID.SERVICE.STARTED.UP.UPFLAGS.DOWN.DOWNFLAGS.FIRST    the client's socket
///     tcx-s.ID                                                     the server's socket
///
/// ID is unique among the stored connections (the storing process's id and a counter), STARTED the start in
/// CLOCK_MONOTONIC milliseconds (the same clock for every process of the machine), UP and DOWN the bytes delivered
/// each way, the flags `e` (the source ended), `f` (the end was passed on), `c` (copy only, no splice), or `-` for
/// none, and FIRST who ended first: `c`, `s` or `-`.
public struct StoredConnection: Equatable, Sendable {
    public var id: String
    /// The index of the service in the process's services (the same configuration gives the same order).
    public var service: Int
    /// CLOCK_MONOTONIC milliseconds when the connection was accepted.
    public var startedAt: Int64
    public var relay: RelayState.Snapshot

    public init(id: String, service: Int, startedAt: Int64, relay: RelayState.Snapshot) {
        self.id = id
        self.service = service
        self.startedAt = startedAt
        self.relay = relay
    }

    /// What a stored descriptor's name says it is.
    public enum Part: Equatable, Sendable {
        /// A connection's client socket, with the connection.
        case client(StoredConnection)
        /// A connection's server socket: the connection whose ID this is.
        case server(id: String)
    }

    /// The prefix of every name this process gives a stored descriptor.
    public static let prefix = "tcx-"

    /// Whether `name` is one this process gives (listening sockets have the names of their socket units).
    public static func isStoredName(_ name: String) -> Bool {
        name.utf8.starts(with: prefix.utf8)
    }

    /// The client socket's name.
    public var clientName: String {
        let up = relay.clientToServer
        let down = relay.serverToClient
        let first = relay.firstToEnd.map { $0 == .client ? "c" : "s" } ?? "-"
        return
            "\(Self.prefix)c.\(id).\(service).\(startedAt).\(up.bytes).\(Self.flags(up)).\(down.bytes).\(Self.flags(down)).\(first)"
    }

    /// The server socket's name.
    public var serverName: String { Self.serverName(id: id) }

    public static func serverName(id: String) -> String { "\(prefix)s.\(id)" }

    private static func flags(_ direction: Direction.Snapshot) -> String {
        var flags = ""
        if direction.sourceEnded { flags += "e" }
        if direction.finished { flags += "f" }
        if direction.copiesOnly { flags += "c" }
        return flags.isEmpty ? "-" : flags
    }

    /// Reads a stored descriptor's name; nil for a name this process does not give, or one that does not parse.
    public static func parse(_ name: String) -> Part? {
        guard isStoredName(name) else { return nil }
        let fields = name.utf8.dropFirst(prefix.utf8.count)
            .split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        guard let kind = fields.first else { return nil }
        if kind == "s" {
            guard fields.count == 2, isIdentifier(fields[1]) else { return nil }
            return .server(id: fields[1])
        }
        guard kind == "c", fields.count == 9, isIdentifier(fields[1]),
            let service = Int(fields[2]), service >= 0,
            let startedAt = Int64(fields[3]), startedAt >= 0,
            let upBytes = UInt64(fields[4]), let up = direction(upBytes, fields[5]),
            let downBytes = UInt64(fields[6]), let down = direction(downBytes, fields[7])
        else { return nil }
        let first: Side?
        switch fields[8] {
        case "c": first = .client
        case "s": first = .server
        case "-": first = nil
        default: return nil
        }
        return .client(
            StoredConnection(
                id: fields[1], service: service, startedAt: startedAt,
                relay: RelayState.Snapshot(clientToServer: up, serverToClient: down, firstToEnd: first)))
    }

    private static func direction(_ bytes: UInt64, _ flags: String) -> Direction.Snapshot? {
        guard flags == "-" || (!flags.isEmpty && flags.allSatisfy({ "efc".contains($0) })) else { return nil }
        let finished = flags.contains("f")
        let sourceEnded = flags.contains("e")
        guard !finished || sourceEnded else { return nil }
        return Direction.Snapshot(
            bytes: bytes, sourceEnded: sourceEnded, finished: finished, copiesOnly: flags.contains("c"))
    }

    /// An ID is a non-empty run of letters, digits and `-`.
    private static func isIdentifier(_ text: String) -> Bool {
        !text.isEmpty
            && text.utf8.allSatisfy { byte in
                (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                    || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || byte == UInt8(ascii: "-")
            }
    }
}

/// A connection that the previous process stored, as systemd passed it: its two sockets and what its name said.
public struct AdoptedConnection: Sendable {
    public let client: CInt
    public let server: CInt
    public let stored: StoredConnection

    public init(client: CInt, server: CInt, stored: StoredConnection) {
        self.client = client
        self.server = server
        self.stored = stored
    }

    /// Pairs the stored descriptors by their names: each client socket with the server socket of the same ID. The
    /// descriptors left over (a socket without its partner, a name that does not parse, a second socket under one
    /// name) are `unpaired`: the caller closes them with a reset.
    public static func pair(_ descriptors: [(fd: CInt, name: String)]) -> (
        connections: [AdoptedConnection], unpaired: [CInt]
    ) {
        var clients: [String: (fd: CInt, stored: StoredConnection)] = [:]
        var servers: [String: CInt] = [:]
        var unpaired: [CInt] = []
        var order: [String] = []
        for (fd, name) in descriptors {
            switch StoredConnection.parse(name) {
            case .client(let stored) where clients[stored.id] == nil:
                clients[stored.id] = (fd, stored)
                order.append(stored.id)
            case .server(let id) where servers[id] == nil:
                servers[id] = fd
            default:
                unpaired.append(fd)
            }
        }
        var connections: [AdoptedConnection] = []
        for id in order {
            let client = clients[id]!
            if let server = servers.removeValue(forKey: id) {
                connections.append(AdoptedConnection(client: client.fd, server: server, stored: client.stored))
            } else {
                unpaired.append(client.fd)
            }
        }
        unpaired.append(contentsOf: servers.values.sorted())
        return (connections, unpaired)
    }
}
