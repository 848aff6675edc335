import Synchronization

/// How clients are told apart for the per-client limits (`--client-prefix-length`): by the block of addresses they
/// come from, the first `ipv4` bits of an IPv4 address and the first `ipv6` bits of an IPv6 one. One IPv4 address is
/// one client by default (/32), and so is one IPv6 /64: whoever has one IPv6 address usually has the whole /64 it is
/// in, and could take a new address for every connection.
public struct ClientPrefixes: Equatable, Sendable {
    public let ipv4: Int
    public let ipv6: Int
    /// The masks over `SocketAddress.bytes`, made once.
    private let mask4: (UInt64, UInt64)
    private let mask6: (UInt64, UInt64)

    /// A prefix length from 1 to 32 for IPv4 and from 1 to 128 for IPv6.
    public init?(ipv4: Int, ipv6: Int) {
        guard (1...32).contains(ipv4), (1...128).contains(ipv6) else { return nil }
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        mask4 = Self.mask(ipv4)
        mask6 = Self.mask(ipv6)
    }

    /// /32 for IPv4, /64 for IPv6.
    public static let standard = ClientPrefixes(ipv4: 32, ipv6: 64)!

    /// The block `address` is in. An IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) is the same client as
    /// over an IPv4 listener: its block is an IPv4 one. A link-local block keeps the address's scope (interface):
    /// `fe80::/64` on one link is not the same client block as on another.
    public func block(of address: SocketAddress) -> ClientBlock {
        if address.family == .ipv4 {
            return ClientBlock(family: .ipv4, bytes: address.bytes, mask: mask4, prefixLength: ipv4, scopeID: 0)
        }
        if let ipv4 = address.unmappedIPv4 {
            return ClientBlock(family: .ipv4, bytes: ipv4.bytes, mask: mask4, prefixLength: self.ipv4, scopeID: 0)
        }
        return ClientBlock(
            family: .ipv6, bytes: address.bytes, mask: mask6, prefixLength: ipv6,
            scopeID: address.isLinkLocal ? address.scopeID : 0)
    }

    /// The first `length` bits set, laid out as `SocketAddress.bytes` (network order in memory).
    private static func mask(_ length: Int) -> (UInt64, UInt64) {
        var bytes = [UInt8](repeating: 0, count: 16)
        for bit in 0..<length { bytes[bit / 8] |= 0x80 >> UInt8(bit % 8) }
        var mask: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &mask) { $0.copyBytes(from: bytes) }
        return mask
    }

    public static func == (lhs: ClientPrefixes, rhs: ClientPrefixes) -> Bool {
        lhs.ipv4 == rhs.ipv4 && lhs.ipv6 == rhs.ipv6
    }
}

/// One client for the per-client limits: a block of addresses, such as `192.0.2.7/32` or `2001:db8:1:2::/64`.
public struct ClientBlock: Hashable, Sendable, CustomStringConvertible {
    public let family: SocketAddress.Family
    /// The network's bytes, as `SocketAddress.bytes` lays them out, host bits cleared.
    private let high: UInt64
    private let low: UInt64
    public let prefixLength: Int
    /// The interface of a link-local block; 0 otherwise.
    public let scopeID: UInt32

    init(
        family: SocketAddress.Family, bytes: (UInt64, UInt64), mask: (UInt64, UInt64), prefixLength: Int,
        scopeID: UInt32
    ) {
        self.family = family
        high = bytes.0 & mask.0
        low = bytes.1 & mask.1
        self.prefixLength = prefixLength
        self.scopeID = scopeID
    }

    /// `192.0.2.7/32`, `2001:db8:1:2::/64`, `fe80::%eth0/64`.
    public var description: String {
        SocketAddress(family: family, bytes: (high, low), port: 0, scopeID: scopeID).host + "/\(prefixLength)"
    }
}

extension SocketAddress {
    /// True for an IPv6 link-local address (`fe80::/10`), which is only meaningful with its scope (interface).
    var isLinkLocal: Bool {
        guard family == .ipv6 else { return false }
        return withUnsafeBytes(of: bytes) { $0[0] == 0xfe && $0[1] & 0xc0 == 0x80 }
    }
}

/// The connections each client block has open, against `--max-connections-per-client`, and the episodes of
/// refusals: a block that reaches its limit is refused further connections, and is reported once when it starts
/// being refused and once when that is over (no refusal for `quietPeriod`), with the number refused, rather than
/// once per attempt. A pure value: the caller gives the time and logs what it returns.
///
/// The table holds an entry only for a block with connections open (at most the process's connection limit) or
/// with an episode not yet over (at most `maximumLingering` of them without connections), so it stays bounded
/// whatever the clients do.
public struct ClientConnectionTable: Sendable {
    /// Connections a block may have open at once.
    public let limit: Int
    public let prefixes: ClientPrefixes
    /// An episode is over after this long without a refusal, in milliseconds.
    public let quietPeriod: Int64
    /// Blocks without connections whose episode is not over yet, at most; past it, the episode of a block whose
    /// last connection ends is over at once.
    public let maximumLingering: Int

    private var blocks: [ClientBlock: Entry] = [:]
    /// Blocks without connections whose episode is not over.
    private var lingering = 0
    /// Episodes not over: while there are none, `endQuietEpisodes` has nothing to look at.
    private var episodes = 0

    private struct Entry {
        var open = 0
        var episode: Episode?
    }

    private struct Episode {
        let started: Int64
        var lastRefusal: Int64
        var refused: Int
    }

    /// What happened to a connection that asked to be counted.
    public enum Admission: Equatable, Sendable {
        /// Counted in its block: give it back with `release` when the connection ends.
        case admitted(ClientBlock)
        /// Its block is at the limit. `episodeStarted`: the first refusal since the block was last refused, to be
        /// reported.
        case refused(ClientBlock, episodeStarted: Bool)
    }

    /// An episode that is over: the block, how many connections it was refused, and how long it was refused for
    /// (from the first refusal to the last), in milliseconds.
    public struct EndedEpisode: Equatable, Sendable, CustomStringConvertible {
        public let block: ClientBlock
        public let refused: Int
        public let duration: Int64
        public let limit: Int

        /// `client block 2001:db8:1:2::/64: 153 connections refused over its limit of 20 in 42.1 s`.
        public var description: String {
            let tenths = (duration + 50) / 100
            let connections = refused == 1 ? "1 connection" : "\(refused) connections"
            return "client block \(block): \(connections) refused over its limit of \(limit) in "
                + "\(tenths / 10).\(tenths % 10) s"
        }
    }

    public init(limit: Int, prefixes: ClientPrefixes, quietPeriod: Int64 = 10_000, maximumLingering: Int = 1024) {
        self.limit = limit
        self.prefixes = prefixes
        self.quietPeriod = quietPeriod
        self.maximumLingering = maximumLingering
    }

    /// Counts a new connection from `client` in its block, or refuses it when the block is at the limit.
    public mutating func admit(_ client: SocketAddress, now: Int64) -> Admission {
        let block = prefixes.block(of: client)
        var entry = blocks[block] ?? Entry()
        defer { blocks[block] = entry }
        if entry.open < limit {
            if entry.open == 0 && entry.episode != nil { lingering -= 1 }
            entry.open += 1
            return .admitted(block)
        }
        if var episode = entry.episode {
            episode.refused += 1
            episode.lastRefusal = now
            entry.episode = episode
            return .refused(block, episodeStarted: false)
        }
        entry.episode = Episode(started: now, lastRefusal: now, refused: 1)
        episodes += 1
        return .refused(block, episodeStarted: true)
    }

    /// Gives back the count of a connection `admit` admitted, when it ends. Returns the block's episode when it is
    /// over at once (its last connection ended and too many blocks linger already).
    public mutating func release(_ block: ClientBlock) -> EndedEpisode? {
        guard var entry = blocks[block], entry.open > 0 else {
            assertionFailure("a connection of \(block) was given back that was not counted")
            return nil
        }
        entry.open -= 1
        guard entry.open == 0 else {
            blocks[block] = entry
            return nil
        }
        guard let episode = entry.episode else {
            blocks[block] = nil
            return nil
        }
        if lingering >= maximumLingering {
            blocks[block] = nil
            episodes -= 1
            return ended(block, episode)
        }
        lingering += 1
        blocks[block] = entry
        return nil
    }

    /// Ends the episodes without a refusal for `quietPeriod` (all of them with `all`, when the relay stops), and
    /// forgets the blocks that hold no connection any more. Returns the episodes that are over, to be reported.
    public mutating func endQuietEpisodes(now: Int64, all: Bool = false) -> [EndedEpisode] {
        guard episodes > 0 else { return [] }
        var over: [(ClientBlock, Episode)] = []
        for (block, entry) in blocks {
            guard let episode = entry.episode, all || now - episode.lastRefusal >= quietPeriod else { continue }
            over.append((block, episode))
        }
        for (block, _) in over {
            if blocks[block]!.open == 0 {
                blocks[block] = nil
                lingering -= 1
            } else {
                blocks[block]!.episode = nil
            }
        }
        episodes -= over.count
        return over.map { ended($0.0, $0.1) }
    }

    private func ended(_ block: ClientBlock, _ episode: Episode) -> EndedEpisode {
        EndedEpisode(
            block: block, refused: episode.refused, duration: episode.lastRefusal - episode.started, limit: limit)
    }

    /// Makes room for `count` blocks at once, so that admitting does not grow the table under load.
    public mutating func reserveCapacity(_ count: Int) { blocks.reserveCapacity(count) }

    /// The connections `block` has open now.
    public func openConnections(of block: ClientBlock) -> Int { blocks[block]?.open ?? 0 }

    /// The blocks the table holds an entry for.
    public var blockCount: Int { blocks.count }
}

/// `--max-connections-per-client`, shared by the event loops: the table behind a lock, and its log lines. The event
/// loops call it only when the option is given.
final class ClientLimits: Sendable {
    let limit: Int
    private let table: Mutex<ClientConnectionTable>

    init(limit: Int, prefixes: ClientPrefixes, expectedBlocks: Int) {
        self.limit = limit
        var table = ClientConnectionTable(limit: limit, prefixes: prefixes)
        table.reserveCapacity(expectedBlocks)
        self.table = Mutex(table)
    }

    /// Counts a new connection from `client`, or refuses it; the first refusal of an episode is logged.
    func admit(_ client: SocketAddress, now: Int64) -> ClientConnectionTable.Admission {
        let admission = table.withLock { $0.admit(client, now: now) }
        if case .refused(let block, episodeStarted: true) = admission {
            Log.warning("client block \(block) reached its limit of \(limit) connections; refusing new ones")
        }
        return admission
    }

    /// Gives back the count of a connection that `admit` admitted.
    func release(_ block: ClientBlock) {
        if let over = table.withLock({ $0.release(block) }) { Log.notice(over.description) }
    }

    /// Logs the episodes that are over (every one with `all`).
    func endQuietEpisodes(now: Int64, all: Bool = false) {
        for over in table.withLock({ $0.endQuietEpisodes(now: now, all: all) }) { Log.notice(over.description) }
    }
}
