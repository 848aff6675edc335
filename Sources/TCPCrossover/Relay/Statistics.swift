import Synchronization

/// The process's figures, shared by the event loops. The counters of what every connection does (accepted, bytes
/// moved) are each loop's own (`LoopTally`), summed when read: bytes are counted on every turn of a connection, and a
/// counter that two loops add to moves its cache line from one core to the other at every add, a cost per request
/// that a relay of small requests pays on each turn. What is rarer (refusals, failed connects) or must be one
/// figure for every loop (the connections open, for the connection limit) is a relaxed atomic here.
public final class Statistics: Sendable {
    /// Connections being relayed (or connecting) now.
    public let active = Atomic<Int>(0)
    /// Connections closed at once by an access rule (`--allow`, `--deny`).
    public let refusedByAccessRule = Atomic<Int>(0)
    /// Connections closed at once because their client block had its limit of connections open
    /// (`--max-connections-per-client`).
    public let refusedOverClientLimit = Atomic<Int>(0)
    /// Connections closed at once because their client block opened connections faster than it may
    /// (`--max-new-connections-per-client`).
    public let refusedOverClientRate = Atomic<Int>(0)
    /// Connections whose remote could not be reached.
    public let failedConnects = Atomic<Int>(0)
    /// The loops' counters, kept after their loops have ended for the figures of the last line.
    private let tallies = Mutex<[LoopTally]>([])

    public init() {}

    /// Counters for a new event loop, which only that loop's thread adds to.
    func addTally() -> LoopTally {
        let tally = LoopTally()
        tallies.withLock { $0.append(tally) }
        return tally
    }

    /// Counts a connection refused for its client block.
    func countRefusal(_ refusal: ClientRefusal) {
        switch refusal {
        case .limit: refusedOverClientLimit.add(1, ordering: .relaxed)
        case .rate: refusedOverClientRate.add(1, ordering: .relaxed)
        }
    }

    public struct Snapshot: Equatable, Sendable {
        public var active: Int
        public var accepted: Int
        public var refusedByAccessRule: Int
        public var refusedOverClientLimit: Int
        public var refusedOverClientRate: Int
        public var failedConnects: Int
        public var bytesUp: UInt64
        public var bytesDown: UInt64
    }

    public func snapshot() -> Snapshot {
        var figures = Snapshot(
            active: active.load(ordering: .relaxed),
            accepted: 0,
            refusedByAccessRule: refusedByAccessRule.load(ordering: .relaxed),
            refusedOverClientLimit: refusedOverClientLimit.load(ordering: .relaxed),
            refusedOverClientRate: refusedOverClientRate.load(ordering: .relaxed),
            failedConnects: failedConnects.load(ordering: .relaxed),
            bytesUp: 0,
            bytesDown: 0
        )
        tallies.withLock { tallies in
            for tally in tallies {
                figures.accepted += Int(tally.load(.accepted))
                figures.bytesUp += tally.load(.bytesUp)
                figures.bytesDown += tally.load(.bytesDown)
            }
        }
        return figures
    }
}

/// One event loop's share of the process's figures (`Statistics`): counters that only the loop's thread adds to, in a
/// block of their own (`CounterBlock`).
struct LoopTally: Sendable {
    enum Figure: Int {
        case accepted, bytesUp, bytesDown
    }

    private let counters = CounterBlock(count: 3)

    /// Where the counters start, for the tests.
    var address: Int { counters.address }

    fileprivate init() {}

    @inline(__always)
    func add(_ figure: Figure, _ amount: UInt64) {
        counters.add(figure.rawValue, amount)
    }

    func load(_ figure: Figure) -> UInt64 {
        counters.load(figure.rawValue)
    }
}

extension Statistics.Snapshot: CustomStringConvertible {
    /// Connections refused at once, for every reason.
    public var refused: Int { refusedByAccessRule + refusedOverClientLimit + refusedOverClientRate }

    /// `3 active, 120 accepted, 0 refused, 1 failed connects, 1.2 MB up, 80.5 MB down`; refusals, when there are
    /// any, by reason: `10 refused (5 per-client limit, 3 per-client rate, 2 access rules)`.
    public var description: String {
        var reasons: [String] = []
        if refusedOverClientLimit > 0 { reasons.append("\(refusedOverClientLimit) per-client limit") }
        if refusedOverClientRate > 0 { reasons.append("\(refusedOverClientRate) per-client rate") }
        if refusedByAccessRule > 0 { reasons.append("\(refusedByAccessRule) access rules") }
        let breakdown = reasons.isEmpty ? "" : " (" + reasons.joined(separator: ", ") + ")"
        return "\(active) active, \(accepted) accepted, \(refused) refused\(breakdown), "
            + "\(failedConnects) failed connects, \(formatBytes(bytesUp)) up, \(formatBytes(bytesDown)) down"
    }
}

/// `532 B`, `12.3 kB`, `4.5 MB`, `1.2 GB`: decimal units, one decimal.
public func formatBytes(_ bytes: UInt64) -> String {
    if bytes < 1000 { return "\(bytes) B" }
    let units = ["kB", "MB", "GB", "TB", "PB"]
    var value = Double(bytes) / 1000
    var unit = 0
    while value >= 999.95 && unit < units.count - 1 {
        value /= 1000
        unit += 1
    }
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[unit])"
}
