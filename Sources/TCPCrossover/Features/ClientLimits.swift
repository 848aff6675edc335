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
        // `SocketAddress.unmappedIPv4` would do, but builds arrays: this runs for every connection.
        let ipv4Bytes: (UInt64, UInt64)? = withUnsafeBytes(of: address.bytes) { raw in
            guard raw[0..<10].allSatisfy({ $0 == 0 }) && raw[10] == 0xff && raw[11] == 0xff else { return nil }
            var bytes: (UInt64, UInt64) = (0, 0)
            withUnsafeMutableBytes(of: &bytes) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[12..<16])) }
            return bytes
        }
        if let ipv4Bytes {
            return ClientBlock(family: .ipv4, bytes: ipv4Bytes, mask: mask4, prefixLength: ipv4, scopeID: 0)
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

/// `--max-new-connections-per-client COUNT/SECONDS`: a client block may open `count` connections in a burst, and
/// then one more every `period / count` (a token bucket that holds `count` and fills at `count` per `period`).
public struct ConnectionRate: Equatable, Sendable, CustomStringConvertible {
    public let count: Int
    /// In milliseconds.
    public let period: Int64

    /// 1 to 1,000,000 connections per 1 ms to 1 day.
    public init?(count: Int, period: Int64) {
        guard (1...1_000_000).contains(count), (1...86_400_000).contains(period) else { return nil }
        self.count = count
        self.period = period
    }

    /// The time one connection takes from the bucket, in microseconds.
    var interval: Int64 { max(1, period * 1000 / Int64(count)) }

    /// `30 new connections per 60 s`.
    public var description: String {
        let seconds = period % 1000 == 0 ? "\(period / 1000)" : "\(Double(period) / 1000)"
        return "\(count) new connection\(count == 1 ? "" : "s") per \(seconds) s"
    }
}

/// Why a connection was refused for its client block.
public enum ClientRefusal: Equatable, Sendable, CustomStringConvertible {
    /// The block had `limit` connections open already (`--max-connections-per-client`).
    case limit(Int)
    /// The block had opened connections faster than the rate (`--max-new-connections-per-client`).
    case rate(ConnectionRate)

    /// `its limit of 20 connections`, `its rate of 30 new connections per 60 s`.
    public var description: String {
        switch self {
        case .limit(let limit): "its limit of \(limit) connection\(limit == 1 ? "" : "s")"
        case .rate(let rate): "its rate of \(rate)"
        }
    }
}

/// The connections each client block has open and has opened lately, against `--max-connections-per-client` and
/// `--max-new-connections-per-client`, and the episodes of refusals: a block over its limit or its rate is refused
/// further connections, and is reported once when it starts being refused and once when that is over (no refusal
/// for `quietPeriod`), with the number refused, rather than once per attempt. A pure value: the caller gives the
/// time and logs what it returns.
///
/// The table holds an entry only for a block with connections open (at most the process's connection limit), or
/// without connections but with an episode not yet over or a bucket not yet full again (at most `maximumLingering`
/// of those; past it, such a block is forgotten when its last connection ends, and its episode reported), so it
/// stays bounded whatever the clients do.
public struct ClientConnectionTable: Sendable {
    /// Connections a block may have open at once; nil for no limit.
    public let limit: Int?
    /// New connections a block may open; nil for no limit.
    public let rate: ConnectionRate?
    public let prefixes: ClientPrefixes
    /// An episode is over after this long without a refusal, in milliseconds.
    public let quietPeriod: Int64
    /// Blocks without connections the table keeps, at most.
    public let maximumLingering: Int

    private var blocks: [ClientBlock: Entry] = [:]
    /// Blocks without connections in the table.
    private var lingering = 0
    /// Episodes not over.
    private var episodes = 0

    private struct Entry {
        var open = 0
        /// When the block's bucket is full again, in microseconds (the theoretical arrival time of the generic cell
        /// rate algorithm): each new connection moves it on by `rate.interval`, and a connection that would move it
        /// more than a full bucket ahead of now is refused.
        var bucketFullAt: Int64 = 0
        var episode: Episode?
    }

    private struct Episode {
        let started: Int64
        var lastRefusal: Int64
        var overLimit = 0
        var overRate = 0
    }

    /// What happened to a connection that asked to be counted.
    public enum Admission: Equatable, Sendable {
        /// Counted in its block: give it back with `release` when the connection ends.
        case admitted(ClientBlock)
        /// Its block is over its limit or rate. `episodeStarted`: the first refusal since the block was last
        /// refused, to be reported.
        case refused(ClientBlock, ClientRefusal, episodeStarted: Bool)
    }

    /// An episode that is over: the block, how many connections it was refused for each reason, and how long it was
    /// refused for (from the first refusal to the last), in milliseconds.
    public struct EndedEpisode: Equatable, Sendable, CustomStringConvertible {
        public let block: ClientBlock
        public let overLimit: Int
        public let overRate: Int
        public let duration: Int64
        public let limit: Int?
        public let rate: ConnectionRate?

        public var refused: Int { overLimit + overRate }

        /// `client block 2001:db8:1:2::/64: 153 connections refused over its limit of 20 connections in 42.1 s`, or
        /// with both reasons `...: 160 connections refused (153 over its limit of 20 connections, 7 over its rate of
        /// 30 new connections per 60 s) in 42.1 s`.
        public var description: String {
            let tenths = (duration + 50) / 100
            let connections = refused == 1 ? "1 connection" : "\(refused) connections"
            let limitText = limit.map { ClientRefusal.limit($0).description } ?? ""
            let rateText = rate.map { ClientRefusal.rate($0).description } ?? ""
            let reasons: String
            if overRate == 0 {
                reasons = " over \(limitText)"
            } else if overLimit == 0 {
                reasons = " over \(rateText)"
            } else {
                reasons = " (\(overLimit) over \(limitText), \(overRate) over \(rateText))"
            }
            return "client block \(block): \(connections) refused\(reasons) in \(tenths / 10).\(tenths % 10) s"
        }
    }

    public init(
        limit: Int?, rate: ConnectionRate? = nil, prefixes: ClientPrefixes, quietPeriod: Int64 = 10_000,
        maximumLingering: Int = 16_384
    ) {
        self.limit = limit
        self.rate = rate
        self.prefixes = prefixes
        self.quietPeriod = quietPeriod
        self.maximumLingering = maximumLingering
    }

    /// Counts a new connection from `client` in its block, or refuses it when the block is at its limit or over its
    /// rate. `now` in milliseconds.
    public mutating func admit(_ client: SocketAddress, now: Int64) -> Admission {
        let block = prefixes.block(of: client)
        var entry = blocks[block] ?? Entry()
        defer { blocks[block] = entry }
        var refusal: ClientRefusal?
        if let limit, entry.open >= limit {
            refusal = .limit(limit)
        } else if let rate {
            let time = now * 1000
            let next = max(entry.bucketFullAt, time) + rate.interval
            // A full bucket lets `count` connections through at once: the last of them moves the time on by
            // `count` intervals.
            if next - time > rate.interval * Int64(rate.count) {
                refusal = .rate(rate)
            } else {
                entry.bucketFullAt = next
            }
        }
        guard let refusal else {
            if entry.open == 0 && blocks[block] != nil { lingering -= 1 }
            entry.open += 1
            return .admitted(block)
        }
        var started = false
        var episode = entry.episode ?? Episode(started: now, lastRefusal: now)
        if entry.episode == nil {
            started = true
            episodes += 1
        }
        // The loops' clocks are read at different moments: one may be a little behind the last refusal's.
        episode.lastRefusal = max(episode.lastRefusal, now)
        if case .limit = refusal { episode.overLimit += 1 } else { episode.overRate += 1 }
        entry.episode = episode
        return .refused(block, refusal, episodeStarted: started)
    }

    /// Gives back the count of a connection `admit` admitted, when it ends. Returns the block's episode when it is
    /// over at once (its last connection ended and too many blocks linger already).
    public mutating func release(_ block: ClientBlock, now: Int64) -> EndedEpisode? {
        guard var entry = blocks[block], entry.open > 0 else {
            assertionFailure("a connection of \(block) was given back that was not counted")
            return nil
        }
        entry.open -= 1
        if entry.open > 0 || (entry.episode == nil && entry.bucketFullAt <= now * 1000) {
            blocks[block] = entry.open > 0 ? entry : nil
            return nil
        }
        if lingering >= maximumLingering {
            blocks[block] = nil
            guard let episode = entry.episode else { return nil }
            episodes -= 1
            return ended(block, episode)
        }
        lingering += 1
        blocks[block] = entry
        return nil
    }

    /// Ends the episodes without a refusal for `quietPeriod` (all of them with `all`, when the relay stops), and
    /// forgets the blocks that hold no connection, have no episode and have a full bucket again. Returns the
    /// episodes that are over, to be reported.
    public mutating func endQuietEpisodes(now: Int64, all: Bool = false) -> [EndedEpisode] {
        guard episodes > 0 || lingering > 0 else { return [] }
        var over: [EndedEpisode] = []
        var forgotten: [ClientBlock] = []
        for (block, entry) in blocks {
            var quiet = entry.episode == nil
            if let episode = entry.episode, all || now - episode.lastRefusal >= quietPeriod {
                over.append(ended(block, episode))
                quiet = true
            }
            if quiet && entry.open == 0 && entry.bucketFullAt <= now * 1000 { forgotten.append(block) }
        }
        for episode in over { blocks[episode.block]?.episode = nil }
        for block in forgotten { blocks[block] = nil }
        episodes -= over.count
        lingering -= forgotten.count
        return over
    }

    private func ended(_ block: ClientBlock, _ episode: Episode) -> EndedEpisode {
        EndedEpisode(
            block: block, overLimit: episode.overLimit, overRate: episode.overRate,
            duration: episode.lastRefusal - episode.started, limit: limit, rate: rate)
    }

    /// Makes room for `count` blocks at once, so that admitting does not grow the table under load.
    public mutating func reserveCapacity(_ count: Int) { blocks.reserveCapacity(count) }

    /// The connections `block` has open now.
    public func openConnections(of block: ClientBlock) -> Int { blocks[block]?.open ?? 0 }

    /// The blocks the table holds an entry for.
    public var blockCount: Int { blocks.count }
}

/// `--max-connections-per-client` and `--max-new-connections-per-client`, shared by the event loops: the table behind
/// a lock, and its log lines. One per service that has one of the options; the event loops call it only then.
final class ClientLimits: Sendable {
    private let table: Mutex<ClientConnectionTable>
    /// `service smtp: ` in front of the log lines of a named service's table; empty for the unnamed one.
    private let logPrefix: String

    init(limit: Int?, rate: ConnectionRate?, prefixes: ClientPrefixes, expectedBlocks: Int, service: String? = nil) {
        var table = ClientConnectionTable(limit: limit, rate: rate, prefixes: prefixes)
        table.reserveCapacity(expectedBlocks)
        self.table = Mutex(table)
        logPrefix = service.map { "service \($0): " } ?? ""
    }

    /// Counts a new connection from `client`, or refuses it; the first refusal of an episode is logged.
    func admit(_ client: SocketAddress, now: Int64) -> ClientConnectionTable.Admission {
        let admission = table.withLock { $0.admit(client, now: now) }
        if case .refused(let block, let refusal, episodeStarted: true) = admission {
            switch refusal {
            case .limit: Log.warning("\(logPrefix)client block \(block) reached \(refusal); refusing new ones")
            case .rate: Log.warning("\(logPrefix)client block \(block) went over \(refusal); refusing new ones")
            }
        }
        return admission
    }

    /// Gives back the count of a connection that `admit` admitted.
    func release(_ block: ClientBlock, now: Int64) {
        if let over = table.withLock({ $0.release(block, now: now) }) { Log.notice(logPrefix + over.description) }
    }

    /// Logs the episodes that are over (every one with `all`).
    func endQuietEpisodes(now: Int64, all: Bool = false) {
        for over in table.withLock({ $0.endQuietEpisodes(now: now, all: all) }) {
            Log.notice(logPrefix + over.description)
        }
    }
}
