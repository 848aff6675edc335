import Glibc

/// A relayed connection as a stopping process leaves it in systemd's file descriptor store, for the process that
/// systemd starts next (`systemctl restart`, a package upgrade): its two sockets and the pipes that hold bytes in
/// transit, each stored under its own name (`FDSTORE=1` with `FDNAME=`), and in the client socket's name what the
/// descriptors do not carry themselves: which ones belong to it, its service, when it began, and the relay's state.
/// The addresses for the log line are asked of the sockets again (getpeername(2), getsockname(2)).
///
/// The names follow systemd's rules for FDNAME= (at most 255 printable ASCII characters, no `:`):
///
///     tcx-c.ID.SERVICE.STARTED.UP.UPFLAGS.UPPIPE.DOWN.DOWNFLAGS.DOWNPIPE.FIRST    the client's socket
///     tcx-s.ID                                                                     the server's socket
///     tcx-pr.ID.c, tcx-pw.ID.c                     the read and write ends of the client-to-server pipe
///     tcx-pr.ID.s, tcx-pw.ID.s                     the read and write ends of the server-to-client pipe
///
/// ID is unique among the stored connections (the storing process's id and a counter), STARTED the start in
/// CLOCK_MONOTONIC milliseconds (the same clock for every process of the machine), UP and DOWN the bytes delivered
/// each way, the flags `e` (the source ended), `f` (the end was passed on), `c` (copy only, no splice), or `-` for
/// none, UPPIPE and DOWNPIPE the bytes in each direction's pipe (its two ends are stored only when there are any),
/// and FIRST who ended first: `c`, `s` or `-`.
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
        /// An end of the pipe of a connection's direction from `source`.
        case pipe(id: String, source: Side, writeEnd: Bool)
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
        return "\(Self.prefix)c.\(id).\(service).\(startedAt).\(up.bytes).\(Self.flags(up)).\(up.pipeBytes)."
            + "\(down.bytes).\(Self.flags(down)).\(down.pipeBytes).\(first)"
    }

    /// The name of an end of the pipe of the direction from `source`.
    public func pipeName(source: Side, writeEnd: Bool) -> String {
        "\(Self.prefix)\(writeEnd ? "pw" : "pr").\(id).\(source == .client ? "c" : "s")"
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
        if kind == "pr" || kind == "pw" {
            guard fields.count == 3, isIdentifier(fields[1]), fields[2] == "c" || fields[2] == "s" else { return nil }
            return .pipe(id: fields[1], source: fields[2] == "c" ? .client : .server, writeEnd: kind == "pw")
        }
        guard kind == "c", fields.count == 11, isIdentifier(fields[1]),
            let service = Int(fields[2]), service >= 0,
            let startedAt = Int64(fields[3]), startedAt >= 0,
            let upBytes = UInt64(fields[4]), let up = direction(upBytes, fields[5], fields[6]),
            let downBytes = UInt64(fields[7]), let down = direction(downBytes, fields[8], fields[9])
        else { return nil }
        let first: Side?
        switch fields[10] {
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

    private static func direction(_ bytes: UInt64, _ flags: String, _ pipe: String) -> Direction.Snapshot? {
        guard flags == "-" || (!flags.isEmpty && flags.allSatisfy({ "efc".contains($0) })) else { return nil }
        let finished = flags.contains("f")
        let sourceEnded = flags.contains("e")
        guard !finished || sourceEnded, let pipeBytes = Int(pipe), pipeBytes >= 0, !(finished && pipeBytes > 0)
        else { return nil }
        return Direction.Snapshot(
            bytes: bytes, sourceEnded: sourceEnded, finished: finished, copiesOnly: flags.contains("c"),
            pipeBytes: pipeBytes)
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

/// A connection that the previous process stored, as systemd passed it: its two sockets, the pipes that hold bytes
/// in transit, and what its name said.
public struct AdoptedConnection: Sendable {
    public let client: CInt
    public let server: CInt
    /// The ends of the client-to-server pipe, when its direction holds bytes (`pipeBytes`).
    public let upstreamPipe: (read: CInt, write: CInt)?
    /// The ends of the server-to-client pipe, likewise.
    public let downstreamPipe: (read: CInt, write: CInt)?
    public let stored: StoredConnection

    public init(
        client: CInt, server: CInt, upstreamPipe: (read: CInt, write: CInt)? = nil,
        downstreamPipe: (read: CInt, write: CInt)? = nil, stored: StoredConnection
    ) {
        self.client = client
        self.server = server
        self.upstreamPipe = upstreamPipe
        self.downstreamPipe = downstreamPipe
        self.stored = stored
    }

    /// Every descriptor of the connection.
    public var descriptors: [CInt] {
        [client, server] + [upstreamPipe, downstreamPipe].compactMap { $0 }.flatMap { [$0.read, $0.write] }
    }

    /// Pairs the stored descriptors by their names: each client socket with the server socket of the same ID, and
    /// with both ends of each pipe that its name says holds bytes. The descriptors left over (a socket or pipe
    /// without what belongs with it, a name that does not parse, a second descriptor under one name) are
    /// `unpaired`: the caller closes them (sockets with a reset).
    public static func pair(_ descriptors: [(fd: CInt, name: String)]) -> (
        connections: [AdoptedConnection], unpaired: [CInt]
    ) {
        var clients: [String: (fd: CInt, stored: StoredConnection)] = [:]
        var servers: [String: CInt] = [:]
        var pipeEnds: [String: CInt] = [:]
        var unpaired: [CInt] = []
        var order: [String] = []
        for (fd, name) in descriptors {
            switch StoredConnection.parse(name) {
            case .client(let stored) where clients[stored.id] == nil:
                clients[stored.id] = (fd, stored)
                order.append(stored.id)
            case .server(let id) where servers[id] == nil:
                servers[id] = fd
            case .pipe where pipeEnds[name] == nil:
                pipeEnds[name] = fd
            default:
                unpaired.append(fd)
            }
        }
        var connections: [AdoptedConnection] = []
        for id in order {
            let client = clients[id]!
            let stored = client.stored
            let server = servers.removeValue(forKey: id)
            func pipe(_ source: Side, holds bytes: Int) -> (read: CInt, write: CInt)?? {
                let read = pipeEnds.removeValue(forKey: stored.pipeName(source: source, writeEnd: false))
                let write = pipeEnds.removeValue(forKey: stored.pipeName(source: source, writeEnd: true))
                if bytes == 0 {
                    unpaired.append(contentsOf: [read, write].compactMap { $0 })
                    return .some(nil)
                }
                guard let read, let write else {
                    unpaired.append(contentsOf: [read, write].compactMap { $0 })
                    return nil
                }
                return (read, write)
            }
            let upstream = pipe(.client, holds: stored.relay.clientToServer.pipeBytes)
            let downstream = pipe(.server, holds: stored.relay.serverToClient.pipeBytes)
            if let server, let upstream, let downstream {
                connections.append(
                    AdoptedConnection(
                        client: client.fd, server: server, upstreamPipe: upstream, downstreamPipe: downstream,
                        stored: stored))
            } else {
                unpaired.append(contentsOf: [client.fd] + [server].compactMap { $0 })
                unpaired.append(
                    contentsOf: [upstream, downstream].compactMap { $0 ?? nil }.flatMap { [$0.read, $0.write] })
            }
        }
        unpaired.append(contentsOf: servers.values.sorted())
        unpaired.append(contentsOf: pipeEnds.values.sorted())
        return (connections, unpaired)
    }
}
