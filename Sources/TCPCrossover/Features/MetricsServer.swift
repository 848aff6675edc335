import Glibc

/// The metrics endpoint (`--metrics`, or the socket systemd passes named `metrics`): a thread of its own, started
/// only when the endpoint is asked for, answers `GET /metrics` with the Prometheus text format. The event loops
/// never wait for it: they only count (see `LoopMeter`), and this thread sums their counters when it is scraped.
/// A scraper cannot hold it: a request must arrive whole within `requestTimeout` and within `requestLimit` bytes,
/// at most `maximumScrapers` are served at once (others wait in the listen backlog), and one that reads nothing is
/// dropped at the same deadline.
public final class MetricsServer: @unchecked Sendable {
    /// The FileDescriptorName= of a socket systemd passes for the metrics: it is served here, never relayed.
    public static let socketName = "metrics"
    /// The request line and headers of a scrape must fit in this many bytes.
    static let requestLimit = 8192
    /// Milliseconds a scraper has to send its request and read the answer.
    static let requestTimeout: Int64 = 5000
    /// Scrapers served at once.
    static let maximumScrapers = 4

    let listeners: [ListeningSocket]
    /// Seconds since the epoch when the relay started (when this object was made, at start).
    let startTime: Double
    private var wake: CInt = -1
    private var thread: pthread_t?

    /// Takes the listening sockets; they are closed when the server goes away.
    public init(listeners: [ListeningSocket]) {
        self.listeners = listeners
        startTime = Syscall.wallClockSeconds()
    }

    deinit {
        for listener in listeners { Syscall.close(listener.fd) }
        if wake >= 0 { Syscall.close(wake) }
    }

    /// What a scrape reads: the loops' meters and the engine's fixed figures.
    struct Source: @unchecked Sendable {
        let serviceNames: [String?]
        let meters: [LoopMeter]
        let connectionLimit: Int
        /// The wide-segment budget, with `--loopback-mss auto` (the default) only.
        let wideSegments: WideSegmentBudget?
    }

    /// Starts the thread. A failure is logged and the relay goes on without metrics.
    func start(_ source: Source) {
        do throws(Errno) {
            wake = try Syscall.eventFD()
            thread = try Syscall.startThread { [self] in serve(source) }
        } catch {
            Log.error("cannot start the metrics thread: \(error); no metrics are served")
        }
    }

    /// Stops the thread and waits for it.
    func stop() {
        guard let thread else { return }
        Syscall.signalEvent(wake)
        Syscall.joinThread(thread)
        self.thread = nil
    }

    /// The figures now, summed over the loops, with the process's own from /proc.
    func snapshot(_ source: Source) -> MetricsSnapshot {
        var snapshot = MetricsSnapshot(serviceNames: source.serviceNames)
        for meter in source.meters { meter.addFigures(to: &snapshot) }
        snapshot.connectionLimit = source.connectionLimit
        snapshot.eventLoops = source.meters.count
        if let budget = source.wideSegments {
            snapshot.loopbackWideSegments = .init(open: budget.openConnections, room: budget.roomAtLastReading)
        }
        snapshot.process.startTime = startTime
        snapshot.process.maximumDescriptors = Syscall.descriptorLimit().soft
        snapshot.process.openDescriptors = Syscall.directoryEntryCount("/proc/self/fd").map { $0 - 1 }
        if let stat = Syscall.readSmallFile("/proc/self/stat"), let figures = ProcessStat(parsing: stat) {
            snapshot.process.threads = figures.threads
            let ticks = Double(Syscall.clockTicksPerSecond)
            snapshot.process.cpuSeconds = Double(figures.cpuTicks) / ticks
            snapshot.process.residentBytes = figures.residentPages * UInt64(Syscall.pageSize)
        }
        return snapshot
    }

    // MARK: the thread

    private struct Scraper {
        let fd: CInt
        let deadline: Int64
        var request: [UInt8] = []
        var response: [UInt8]?
        var sent = 0
        /// The answer is sent and the sending side shut down: what the scraper still sends is read and dropped
        /// until it closes, so that closing with unread bytes does not reset the answer away.
        var draining = false

        var events: Int16 { Int16(response == nil || draining ? POLLIN : POLLOUT) }
    }

    private func serve(_ source: Source) {
        var scrapers: [Scraper] = []
        var descriptors: [pollfd] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        /// accept(2) failed for want of descriptors or memory: the listeners rest until then, rather than spin.
        var acceptResumeAt: Int64 = 0
        defer { for scraper in scrapers { Syscall.close(scraper.fd) } }
        while true {
            descriptors.removeAll(keepingCapacity: true)
            descriptors.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
            for scraper in scrapers {
                descriptors.append(pollfd(fd: scraper.fd, events: scraper.events, revents: 0))
            }
            var now = Syscall.monotonicMilliseconds()
            let accepting = scrapers.count < Self.maximumScrapers && now >= acceptResumeAt
            let listenersAt = descriptors.count
            if accepting {
                for listener in listeners {
                    descriptors.append(pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0))
                }
            }
            var wakeAt = scrapers.map(\.deadline).min()
            if now < acceptResumeAt { wakeAt = min(wakeAt ?? acceptResumeAt, acceptResumeAt) }
            let timeout = wakeAt.map { CInt(clamping: max(0, $0 - now)) } ?? -1
            Syscall.poll(&descriptors, timeout: timeout)
            if descriptors[0].revents != 0 { return }
            now = Syscall.monotonicMilliseconds()

            // The scrapers first: their entries come right after the wake-up descriptor.
            var kept: [Scraper] = []
            for (position, var scraper) in scrapers.enumerated() {
                let events = descriptors[1 + position].revents
                var done = false
                if events != 0 {
                    done = progress(&scraper, source: source, buffer: &buffer)
                }
                if !done && now >= scraper.deadline {
                    // Too slow to send its request or to read the answer: dropped with a reset.
                    Syscall.setResetOnClose(scraper.fd)
                    done = true
                }
                if done { Syscall.close(scraper.fd) } else { kept.append(scraper) }
            }
            scrapers = kept

            guard accepting else { continue }
            for (position, listener) in listeners.enumerated() where descriptors[listenersAt + position].revents != 0 {
                accepting: while scrapers.count < Self.maximumScrapers {
                    do throws(Errno) {
                        guard case .processed(let accepted) = try Syscall.accept(listener.fd) else { break }
                        scrapers.append(Scraper(fd: accepted.fd, deadline: now + Self.requestTimeout))
                    } catch {
                        if error.isAcceptAgain { continue }
                        acceptResumeAt = now + 100
                        break accepting
                    }
                }
            }
        }
    }

    /// Reads a scraper's request, writes its answer, then reads what it still sends until it closes, as far as its
    /// socket allows; true when it is done with (answered and closed, gone, or failed).
    private func progress(_ scraper: inout Scraper, source: Source, buffer: inout [UInt8]) -> Bool {
        if scraper.draining {
            while let count = Self.receive(scraper.fd, into: &buffer) {
                if count == 0 { return true }
            }
            return false
        }
        if scraper.response == nil {
            while let count = Self.receive(scraper.fd, into: &buffer) {
                if count == 0 { return true }
                scraper.request += buffer[0..<count]
                let head = HTTPRequestHead(parsing: scraper.request, limit: Self.requestLimit)
                if head == .incomplete { continue }
                scraper.response = MetricsEndpoint.response(to: head) {
                    MetricsExposition.render(snapshot(source))
                }
                break
            }
        }
        guard let response = scraper.response else { return false }
        while scraper.sent < response.count {
            let result = response.withUnsafeBytes { all in
                Result { () throws(Errno) in
                    try Syscall.send(scraper.fd, UnsafeRawBufferPointer(rebasing: all[scraper.sent...]), more: false)
                }
            }
            guard case .success(let outcome) = result else { return true }
            guard case .processed(let count) = outcome else { return false }
            scraper.sent += count
        }
        scraper.draining = true
        return (try? Syscall.shutdownWrite(scraper.fd)) == nil
    }

    /// One non-blocking receive from a scraper into `buffer`: the bytes received, 0 when the scraper closed or its
    /// socket failed (it is done with), nil when nothing waits.
    private static func receive(_ fd: CInt, into buffer: inout [UInt8]) -> Int? {
        let result = buffer.withUnsafeMutableBytes { room in
            Result { () throws(Errno) in try Syscall.receive(fd, into: room) }
        }
        guard case .success(let outcome) = result else { return 0 }
        guard case .processed(let count) = outcome else { return nil }
        return count
    }
}

/// The request line of an HTTP/1.x request, once its head (up to the empty line) has arrived.
enum HTTPRequestHead: Equatable {
    /// The empty line that ends the head has not arrived yet.
    case incomplete
    /// The method and the path (the target without its query).
    case request(method: String, path: String)
    /// Not an HTTP/1.x request line.
    case malformed
    /// The head is longer than the limit.
    case tooLarge

    init(parsing bytes: [UInt8], limit: Int) {
        guard let end = Self.endOfHead(bytes) else {
            self = bytes.count >= limit ? .tooLarge : .incomplete
            return
        }
        guard end <= limit else {
            self = .tooLarge
            return
        }
        let line = bytes[..<(bytes.firstIndex(of: 0x0a) ?? end)]
        let trimmed = line.last == 0x0d ? line.dropLast() : line
        let parts = trimmed.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy({ $0 >= 0x41 && $0 <= 0x5a }),
            parts[1].first == 0x2f, parts[2].starts(with: Array("HTTP/1.".utf8))
        else {
            self = .malformed
            return
        }
        let target = parts[1]
        let path = target.prefix { $0 != 0x3f }
        self = .request(
            method: String(decoding: parts[0], as: UTF8.self), path: String(decoding: path, as: UTF8.self))
    }

    /// Where the head ends (after its empty line), or nil.
    private static func endOfHead(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index < bytes.count {
            if bytes[index] == 0x0a {
                if index + 1 < bytes.count && bytes[index + 1] == 0x0a { return index + 2 }
                if index + 2 < bytes.count && bytes[index + 1] == 0x0d && bytes[index + 2] == 0x0a { return index + 3 }
            }
            index += 1
        }
        return nil
    }
}

/// What the metrics endpoint answers: the metrics for `GET /metrics` (their head for `HEAD`), 405 for another
/// method there, 404 for another path, 400 for what is not an HTTP request, 431 for a head over the limit. Every
/// answer closes the connection.
enum MetricsEndpoint {
    static let path = "/metrics"

    static func response(to head: HTTPRequestHead, metrics: () -> String) -> [UInt8] {
        switch head {
        case .request(let method, path) where method == "GET" || method == "HEAD":
            let body = metrics()
            return answer("200 OK", contentType: MetricsExposition.contentType, body: body, sendBody: method == "GET")
        case .request(_, path):
            return answer("405 Method Not Allowed", extra: "Allow: GET, HEAD\r\n", body: "only GET and HEAD\n")
        case .request:
            return answer("404 Not Found", body: "the metrics are at \(path)\n")
        case .malformed, .incomplete:
            return answer("400 Bad Request", body: "not an HTTP/1 request\n")
        case .tooLarge:
            return answer("431 Request Header Fields Too Large", body: "request too large\n")
        }
    }

    private static func answer(
        _ status: String, contentType: String = "text/plain; charset=utf-8", extra: String = "", body: String,
        sendBody: Bool = true
    ) -> [UInt8] {
        var text =
            "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Connection: close\r\n\(extra)\r\n"
        if sendBody { text += body }
        return Array(text.utf8)
    }
}

/// The figures of /proc/self/stat (proc(5)) that the metrics give: threads, CPU time, resident pages.
struct ProcessStat: Equatable {
    var threads: Int
    /// utime + stime, in clock ticks.
    var cpuTicks: UInt64
    var residentPages: UInt64

    init(threads: Int, cpuTicks: UInt64, residentPages: UInt64) {
        self.threads = threads
        self.cpuTicks = cpuTicks
        self.residentPages = residentPages
    }

    /// Fields are counted after the command name's closing parenthesis (the name may hold spaces and parentheses):
    /// state is field 3, utime 14, stime 15, num_threads 20, rss 24.
    init?(parsing bytes: [UInt8]) {
        guard let close = bytes.lastIndex(of: 0x29) else { return nil }
        let fields = bytes[(close + 1)...].split(whereSeparator: { $0 == 0x20 || $0 == 0x0a })
        // fields[0] is field 3.
        func field(_ number: Int) -> UInt64? {
            let index = number - 3
            guard index < fields.count else { return nil }
            return UInt64(String(decoding: fields[index], as: UTF8.self))
        }
        guard let user = field(14), let system = field(15), let threads = field(20), let resident = field(24) else {
            return nil
        }
        self.threads = Int(threads)
        cpuTicks = user + system
        residentPages = resident
    }
}
