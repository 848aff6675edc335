import Synchronization

/// Why accepting paused: the `reason` label of `tcp_crossover_accept_pauses_total`. At either, a new client is not
/// refused: it waits in the listen backlog until accepting resumes.
public enum AcceptPause: Int, CaseIterable, Sendable {
    /// `--max-connections` connections are open.
    case connectionLimit
    /// accept(2) or socket(2) found no descriptor (or memory) left.
    case noDescriptor

    public var token: StaticString {
        switch self {
        case .connectionLimit: "connection-limit"
        case .noDescriptor: "no-descriptor"
        }
    }
}

/// The buckets of a histogram, as upper bounds in milliseconds (the event loops' clock); a last bucket above them
/// all (`+Inf`) is implied.
public struct HistogramBuckets: Sendable, Equatable {
    public let bounds: [Int64]

    public init(bounds: [Int64]) {
        self.bounds = bounds
    }

    /// Time from accepting a client to being connected to the remote, failover included: loopback and LAN
    /// remotes fall in the first buckets, a remote that answers slowly or a failover after a timeout in the last.
    public static let connectTime = HistogramBuckets(bounds: [
        1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000,
    ])

    /// The life of a relayed connection: a request of a web page to a mail client's day-long IMAP IDLE.
    public static let connectionDuration = HistogramBuckets(
        bounds: [10, 100, 1000, 10_000, 60_000, 300_000, 1_800_000, 3_600_000, 21_600_000, 86_400_000])

    /// The bucket of an observation: the first bound it does not exceed, or `bounds.count` for `+Inf`.
    @inline(__always)
    func bucket(of milliseconds: Int64) -> Int {
        var index = 0
        while index < bounds.count && milliseconds > bounds[index] { index += 1 }
        return index
    }
}

/// One event loop's share of the metrics (`--metrics`): counters that only the loop's thread writes (a
/// `CounterBlock`), and the metrics thread reads and sums over the loops when it is scraped. Counting takes no lock
/// and allocates nothing; only a failed connect, off the relaying path, takes the loop's own lock, to count per remote
/// address. A loop has no meter at all without `--metrics`.
final class LoopMeter: @unchecked Sendable {
    /// Where each figure of a service sits in its block of counters.
    private enum Field {
        static let accepted = 0
        static let bytesUp = 1
        static let bytesDown = 2
        static let ended = 3
        static let refused = ended + ConnectionEnd.allCases.count
        static let connectTime = refused + Refusal.allCases.count
        /// The buckets (the last one `+Inf`), then the sum of the observations in milliseconds.
        static let duration = connectTime + HistogramBuckets.connectTime.bounds.count + 2
        static let count = duration + HistogramBuckets.connectionDuration.bounds.count + 2
    }

    let serviceCount: Int
    private let counters: CounterBlock
    /// The process's counters, after the services' blocks.
    private var processBase: Int { serviceCount * Field.count }
    /// Failed connects by service, remote address and reason.
    private let failures = Mutex<[FailureKey: UInt64]>([:])

    struct FailureKey: Hashable {
        let service: Int
        let remote: SocketAddress
        let reason: ConnectFailure
    }

    init(serviceCount: Int) {
        self.serviceCount = serviceCount
        let total = serviceCount * Field.count + AcceptPause.allCases.count
        counters = CounterBlock(count: total)
    }

    @inline(__always)
    private func add(_ index: Int, _ amount: UInt64 = 1) {
        counters.add(index, amount)
    }

    @inline(__always)
    private func load(_ index: Int) -> UInt64 {
        counters.load(index)
    }

    // MARK: counting, on the loop's thread

    /// A connection of `service` was accepted (or adopted, or handed over to this loop).
    @inline(__always)
    func accepted(_ service: Int) {
        add(service * Field.count + Field.accepted)
    }

    /// Bytes a connection of `service` moved since it was last counted.
    @inline(__always)
    func moved(_ service: Int, up: UInt64, down: UInt64) {
        let base = service * Field.count
        add(base + Field.bytesUp, up)
        add(base + Field.bytesDown, down)
    }

    /// A connection of `service` reached its remote `milliseconds` after it was accepted.
    @inline(__always)
    func connected(_ service: Int, after milliseconds: Int64) {
        observe(service * Field.count + Field.connectTime, .connectTime, milliseconds)
    }

    /// A connection of `service` ended; `relayedFor`: how long it lived, if it reached its remote.
    @inline(__always)
    func ended(_ service: Int, _ end: ConnectionEnd, refusal: Refusal?, relayedFor milliseconds: Int64?) {
        let base = service * Field.count
        add(base + Field.ended + end.rawValue)
        if let refusal { add(base + Field.refused + refusal.rawValue) }
        if let milliseconds { observe(base + Field.duration, .connectionDuration, milliseconds) }
    }

    /// `connection` ended: how, and for how long it was relayed if it reached its remote.
    @inline(__always)
    func ended(_ connection: Connection, _ ending: Connection.Ending, now: Int64) {
        var refusal: Refusal?
        switch ending {
        case .refused(let reason, _): refusal = reason
        case .refusedForClient(_, .limit): refusal = .clientLimit
        case .refusedForClient(_, .rate): refusal = .clientRate
        default: break
        }
        ended(
            connection.service, ending.end, refusal: refusal,
            relayedFor: connection.phase == .relaying ? now - connection.startedAt : nil)
    }

    /// A connect to `remote` failed; not on the relaying path.
    func connectFailed(_ service: Int, remote: SocketAddress, _ reason: ConnectFailure) {
        failures.withLock { $0[FailureKey(service: service, remote: remote, reason: reason), default: 0] += 1 }
    }

    /// Accepting paused.
    func acceptPaused(_ reason: AcceptPause) {
        add(processBase + reason.rawValue)
    }

    @inline(__always)
    private func observe(_ base: Int, _ buckets: HistogramBuckets, _ milliseconds: Int64) {
        let value = max(0, milliseconds)
        add(base + buckets.bucket(of: value))
        add(base + buckets.bounds.count + 1, UInt64(value))
    }

    // MARK: reading, on the metrics thread

    /// Adds this loop's figures to `snapshot`, whose services must match this meter's.
    func addFigures(to snapshot: inout MetricsSnapshot) {
        for service in 0..<min(serviceCount, snapshot.services.count) {
            let base = service * Field.count
            var figures = snapshot.services[service]
            // The ends first, then the accepts: every connection that has ended was accepted earlier, so the
            // difference (the active connections) is never negative however the loop moves on meanwhile.
            var ended: UInt64 = 0
            for end in ConnectionEnd.allCases {
                let count = load(base + Field.ended + end.rawValue)
                figures.ended[end.rawValue] += count
                ended += count
            }
            let accepted = load(base + Field.accepted)
            figures.accepted += accepted
            figures.active += accepted >= ended ? accepted - ended : 0
            for refusal in Refusal.allCases {
                figures.refused[refusal.rawValue] += load(base + Field.refused + refusal.rawValue)
            }
            figures.bytesUp += load(base + Field.bytesUp)
            figures.bytesDown += load(base + Field.bytesDown)
            addHistogram(base + Field.connectTime, to: &figures.connectTime)
            addHistogram(base + Field.duration, to: &figures.duration)
            snapshot.services[service] = figures
        }
        for reason in AcceptPause.allCases {
            snapshot.acceptPauses[reason.rawValue] += load(processBase + reason.rawValue)
        }
        let failures = self.failures.withLock { $0 }
        for (key, count) in failures {
            let failure = MetricsSnapshot.ConnectFailureCount(
                service: key.service, remote: key.remote.description, reason: key.reason, count: count)
            if let index = snapshot.connectFailures.firstIndex(where: { $0.sameSeries(as: failure) }) {
                snapshot.connectFailures[index].count += count
            } else {
                snapshot.connectFailures.append(failure)
            }
        }
    }

    private func addHistogram(_ base: Int, to histogram: inout MetricsSnapshot.Histogram) {
        for bucket in histogram.counts.indices { histogram.counts[bucket] += load(base + bucket) }
        histogram.sumMilliseconds += load(base + histogram.counts.count)
    }
}

/// The figures the metrics endpoint serves, summed over the event loops at one scrape: what
/// `MetricsExposition` renders. A plain value, so that rendering is tested without a relay.
public struct MetricsSnapshot: Sendable, Equatable {
    /// Counts per bucket (not cumulative; the last is above every bound) and the sum of the observations.
    public struct Histogram: Sendable, Equatable {
        public var buckets: HistogramBuckets
        public var counts: [UInt64]
        public var sumMilliseconds: UInt64 = 0

        public init(_ buckets: HistogramBuckets) {
            self.buckets = buckets
            counts = Array(repeating: 0, count: buckets.bounds.count + 1)
        }
    }

    /// One service's figures; `name` is the `service` label: the name of the remotes, or `default`.
    public struct ServiceFigures: Sendable, Equatable {
        public var name: String
        public var accepted: UInt64 = 0
        public var active: UInt64 = 0
        /// By `ConnectionEnd.rawValue`.
        public var ended = [UInt64](repeating: 0, count: ConnectionEnd.allCases.count)
        /// By `Refusal.rawValue`.
        public var refused = [UInt64](repeating: 0, count: Refusal.allCases.count)
        public var bytesUp: UInt64 = 0
        public var bytesDown: UInt64 = 0
        public var connectTime = Histogram(.connectTime)
        public var duration = Histogram(.connectionDuration)

        public init(name: String?) {
            self.name = name ?? "default"
        }
    }

    /// Failed connects to one remote address for one reason.
    public struct ConnectFailureCount: Sendable, Equatable {
        public var service: Int
        public var remote: String
        public var reason: ConnectFailure
        public var count: UInt64

        public init(service: Int, remote: String, reason: ConnectFailure, count: UInt64) {
            self.service = service
            self.remote = remote
            self.reason = reason
            self.count = count
        }

        func sameSeries(as other: ConnectFailureCount) -> Bool {
            service == other.service && remote == other.remote && reason == other.reason
        }
    }

    /// The wide-segment budget's figures (`WideSegmentBudget`).
    public struct WideSegmentFigures: Sendable, Equatable {
        /// Connections to servers on this machine that have the loopback interface's segments.
        public var open: Int
        /// How many the last reading of TCP memory left room for; nil before the first reading.
        public var room: Int?

        public init(open: Int, room: Int?) {
            self.open = open
            self.room = room
        }
    }

    /// Figures of the process as a whole; nil where /proc could not be read.
    public struct ProcessFigures: Sendable, Equatable {
        /// Seconds since the epoch, to the millisecond.
        public var startTime: Double = 0
        public var maximumDescriptors: UInt64 = 0
        public var openDescriptors: Int?
        public var threads: Int?
        public var cpuSeconds: Double?
        public var residentBytes: UInt64?

        public init() {}
    }

    public var version: String = tcpCrossoverVersion
    public var services: [ServiceFigures]
    public var connectFailures: [ConnectFailureCount] = []
    /// By `AcceptPause.rawValue`.
    public var acceptPauses = [UInt64](repeating: 0, count: AcceptPause.allCases.count)
    public var connectionLimit: Int = 0
    public var eventLoops: Int = 0
    /// The places taken in the wide-segment budget (`--loopback-mss auto`), and the room the last reading of TCP
    /// memory left (nil before the first); nil with another `--loopback-mss`.
    public var loopbackWideSegments: WideSegmentFigures?
    public var process = ProcessFigures()

    public init(serviceNames: [String?]) {
        services = serviceNames.map { ServiceFigures(name: $0) }
    }
}
