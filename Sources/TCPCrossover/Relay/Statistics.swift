import CLinux
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

/// One event loop's share of the process's figures (`Statistics`): counters that only the loop's thread adds to,
/// with a relaxed load and store (`tcx_counter_add`, no locked instruction), in a block of their own that shares
/// its cache lines with nothing another thread writes.
final class LoopTally: @unchecked Sendable {
    enum Figure: Int {
        case accepted, bytesUp, bytesDown
    }

    /// Two cache lines: the hardware's adjacent-line prefetch fetches lines in pairs.
    static let blockSize = 128
    private let counters: UnsafeMutablePointer<UInt64>

    /// Where the block starts, for the tests.
    var address: Int { Int(bitPattern: counters) }

    fileprivate init() {
        let block = UnsafeMutableRawPointer.allocate(byteCount: Self.blockSize, alignment: Self.blockSize)
        counters = block.initializeMemory(as: UInt64.self, repeating: 0, count: Self.blockSize / 8)
    }

    deinit {
        counters.deallocate()
    }

    @inline(__always)
    func add(_ figure: Figure, _ amount: UInt64) {
        tcx_counter_add(counters + figure.rawValue, amount)
    }

    func load(_ figure: Figure) -> UInt64 {
        tcx_counter_load(counters + figure.rawValue)
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
