import Synchronization

/// The segment size the relay asks of a server on this machine (`--loopback-mss`). A server's send buffer is sized by
/// its segments: at the loopback interface's (some 64 KiB) a server writing to clients that stopped reading holds
/// twice what it holds at 4 KiB, enough to bring the whole machine into TCP memory pressure, where the kernel clamps
/// every connection's window.
public enum LoopbackSegments: Sendable, Equatable {
    /// The interface's, always.
    case system
    /// At most this many bytes, always.
    case fixed(Int)
    /// The interface's for as many connections at once as the machine's TCP memory has room for if each of their
    /// servers filled its send buffer (`WideSegmentBudget`), at most `small` bytes for the others: bulk transfers
    /// keep their speed, and clients that stop reading, however many connect at once, cannot make the servers hold
    /// enough to bring the machine into pressure.
    case adaptive(small: Int)

    /// The default: 4 KiB segments once TCP memory is high.
    public static let standard = LoopbackSegments.adaptive(small: 4096)

    /// The segment size to ask for (nil: the interface's); for `adaptive`, `wide` says whether this connection may
    /// have the interface's (`WideSegmentBudget.admit`).
    @inline(__always)
    func segmentSize(wide: () -> Bool) -> Int? {
        switch self {
        case .system: nil
        case .fixed(let bytes): bytes
        case .adaptive(let small): wide() ? nil : small
        }
    }
}

/// The machine's TCP memory as the kernel counts it: what all TCP sockets hold (/proc/self/net/sockstat, `TCP: …
/// mem PAGES`) against the pressure threshold (the middle of /proc/sys/net/ipv4/tcp_mem, in pages), past which the
/// kernel clamps the windows of every TCP socket on the machine.
struct TCPMemory: Equatable {
    var allocatedPages: Int
    var pressurePages: Int

    /// The pages from what TCP holds now to a quarter of the way to the pressure threshold (0 when it is past it):
    /// what the servers on this machine may fill for clients that stop reading, far enough below the threshold
    /// that the machine does not reach it, and far above what a machine holds while its clients read.
    var headroomPages: Int { max(0, pressurePages / 4 - allocatedPages) }

    /// The `mem` field of the `TCP:` line of /proc/net/sockstat.
    static func allocatedPages(sockstat: [UInt8]) -> Int? {
        let text = String(decoding: sockstat, as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix("TCP: ") {
            let fields = line.split(separator: " ")
            guard let mem = fields.firstIndex(of: "mem"), mem + 1 < fields.count else { return nil }
            return Int(fields[mem + 1])
        }
        return nil
    }

    /// The middle of the three numbers of /proc/sys/net/ipv4/tcp_mem.
    static func pressurePages(tcpMem: [UInt8]) -> Int? {
        let fields = String(decoding: tcpMem, as: UTF8.self).split(whereSeparator: {
            $0 == " " || $0 == "\t" || $0 == "\n"
        })
        guard fields.count == 3, let pressure = Int(fields[1]), pressure > 0 else { return nil }
        return pressure
    }

    /// The kernel's own default threshold where tcp_mem cannot be read (a service with `ProcSubset=pid`): a
    /// sixteenth of the memory's pages.
    static func defaultPressurePages(memoryPages: Int) -> Int { max(128, memoryPages / 16) }
}

/// How many connections to servers on this machine may have the interface's segments at once (`LoopbackSegments
/// .adaptive`). Each is counted at `reservedBytes`, what its server's send buffer may grow to (tcp_wmem's default
/// maximum) if its client stops reading, and together with the TCP memory the machine holds they must stay below a
/// quarter of the pressure threshold (`TCPMemory.headroomPages`). Counted at connect rather than measured later: clients
/// that connect at once and then stop reading have all connected before their servers' buffers fill. TCP memory is
/// read no more than once a second whatever the number of loops and connections (the loops share one reading);
/// where it cannot be read, no connection gets the interface's segments. Logs a line when connections start to get
/// the small segments, and one when a reading finds that a whole interval passed without that.
final class WideSegmentBudget: Sendable {
    static let interval: Int64 = 1000
    static let reservedBytes = 4 << 20

    private let read: @Sendable () -> TCPMemory?
    /// When it was last read (monotonic milliseconds); `neverRead` before the first time.
    private let readAt = Atomic<Int64>(neverRead)
    private static let neverRead = Int64.min / 2
    /// How many connections the last reading left room for, and whether there has been a reading.
    private let room = Atomic<Int>(0)
    private let haveReading = Atomic<Bool>(false)
    /// Connections with the interface's segments that are still open.
    private let open = Atomic<Int>(0)
    /// A connection was given the small segments since the last reading, and whether that began an episode not yet
    /// over (logged when it begins and when a whole interval passed without one).
    private let narrowed = Atomic<Bool>(false)
    private let narrowing = Atomic<Bool>(false)
    /// The last reading, for the log lines: pages, -1 when it could not be read.
    private let allocatedPages = Atomic<Int>(-1)
    private let pressurePages = Atomic<Int>(-1)
    private let pageSize: Int

    init(pageSize: Int = Syscall.pageSize, read: @escaping @Sendable () -> TCPMemory? = Syscall.tcpMemory) {
        self.pageSize = pageSize
        self.read = read
    }

    /// Whether a new connection may have the interface's segments; if so it holds a place until `release()`.
    func admit(now: Int64) -> Bool {
        let last = readAt.load(ordering: .relaxed)
        if now - last >= Self.interval,
            readAt.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged
        {
            refresh()
        } else if !haveReading.load(ordering: .acquiring) {
            // Another loop is taking the first reading: this one takes it too rather than refuse without one.
            refresh()
        }
        let limit = room.load(ordering: .relaxed)
        var current = open.load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = open.compareExchange(
                expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        narrowed.store(true, ordering: .relaxed)
        if !narrowing.load(ordering: .relaxed),
            narrowing.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
        {
            Log.notice(
                "new connections to servers on this machine get small segments (--loopback-mss): "
                    + "\(open.load(ordering: .relaxed)) have the interface's, as many as \(figures) has room for")
        }
        return false
    }

    /// Takes a place for a connection that has the interface's segments already, without asking whether there is
    /// room: one taken over from the previous process (its socket's segment size was settled at its connect). It
    /// counts against the room of the connections after it, as it did in the process before.
    func hold() {
        open.add(1, ordering: .relaxed)
    }

    /// Gives back the place of a connection that `admit` or `hold` gave it, when it ends.
    func release() {
        open.subtract(1, ordering: .relaxed)
    }

    /// Connections with the interface's segments now open.
    var openConnections: Int { open.load(ordering: .relaxed) }

    /// How many connections the last reading of TCP memory left room for; nil before the first reading (the first
    /// connection to a server on this machine takes it).
    var roomAtLastReading: Int? { haveReading.load(ordering: .acquiring) ? room.load(ordering: .relaxed) : nil }

    private func refresh() {
        let memory = read()
        room.store(memory.map { $0.headroomPages * pageSize / Self.reservedBytes } ?? 0, ordering: .relaxed)
        allocatedPages.store(memory?.allocatedPages ?? -1, ordering: .relaxed)
        pressurePages.store(memory?.pressurePages ?? -1, ordering: .relaxed)
        haveReading.store(true, ordering: .releasing)
        if !narrowed.exchange(false, ordering: .relaxed),
            narrowing.compareExchange(expected: true, desired: false, ordering: .relaxed).exchanged
        {
            Log.notice(
                "new connections to servers on this machine get the interface's segments again: "
                    + "\(open.load(ordering: .relaxed)) have them, \(figures)")
        }
    }

    /// The last reading, as the log lines give it.
    private var figures: String {
        let allocated = allocatedPages.load(ordering: .relaxed)
        let pressure = pressurePages.load(ordering: .relaxed)
        guard allocated >= 0 else { return "TCP memory that cannot be read (/proc/self/net/sockstat)" }
        // Parenthesised: Swift's shifts bind more tightly than its multiplication.
        let (heldMiB, thresholdMiB) = ((allocated * pageSize) >> 20, (pressure * pageSize) >> 20)
        return "TCP memory (\(heldMiB) MiB held, pressure threshold \(thresholdMiB) MiB)"
    }
}
