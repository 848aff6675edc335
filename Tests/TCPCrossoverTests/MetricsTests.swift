import Glibc
import Testing

@testable import TCPCrossover

/// The metrics: what the loops count, how it is summed and rendered, and what the endpoint answers.
@Suite struct MetricsTests {
    static func address(_ text: String, _ port: UInt16) throws -> SocketAddress {
        var address = try #require(SocketAddress(numericHost: text))
        address.port = port
        return address
    }

    /// The lines of `text` that start with `prefix`.
    static func lines(_ text: String, _ prefix: String) -> [String] {
        text.split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
    }

    @Test func meters_ofSeveralLoops_areSummedPerService() throws {
        let first = LoopMeter(serviceCount: 2)
        let second = LoopMeter(serviceCount: 2)
        first.accepted(0)
        first.accepted(0)
        first.accepted(1)
        second.accepted(1)
        first.moved(0, up: 10, down: 1000)
        second.moved(1, up: 5, down: 7)
        first.connected(0, after: 0)
        first.connected(0, after: 30)
        first.ended(0, .clientClosed, refusal: nil, relayedFor: 40)
        first.ended(1, .refused, refusal: .accessRule, relayedFor: nil)
        second.ended(1, .connectFailed, refusal: nil, relayedFor: nil)
        let remote = try Self.address("127.0.0.1", 9)
        first.connectFailed(1, remote: remote, .refused)
        second.connectFailed(1, remote: remote, .refused)
        second.connectFailed(1, remote: remote, .timeout)
        second.acceptPaused(.connectionLimit)

        var snapshot = MetricsSnapshot(serviceNames: [nil, "smtp"])
        first.addFigures(to: &snapshot)
        second.addFigures(to: &snapshot)
        let web = snapshot.services[0]
        #expect(web.name == "default")
        #expect(web.accepted == 2)
        #expect(web.active == 1)
        #expect(web.ended[ConnectionEnd.clientClosed.rawValue] == 1)
        #expect(web.bytesUp == 10 && web.bytesDown == 1000)
        #expect(web.connectTime.counts[0] == 1)  // 0 ms: in the first bucket (1 ms)
        #expect(web.connectTime.counts[5] == 1)  // 30 ms: in the 50 ms bucket
        #expect(web.connectTime.sumMilliseconds == 30)
        #expect(web.duration.counts[1] == 1)  // 40 ms: in the 100 ms bucket
        let smtp = snapshot.services[1]
        #expect(smtp.name == "smtp")
        #expect(smtp.accepted == 2)
        #expect(smtp.active == 0)
        #expect(smtp.refused[Refusal.accessRule.rawValue] == 1)
        #expect(smtp.ended[ConnectionEnd.refused.rawValue] == 1)
        #expect(smtp.ended[ConnectionEnd.connectFailed.rawValue] == 1)
        #expect(smtp.bytesUp == 5 && smtp.bytesDown == 7)
        #expect(snapshot.acceptPauses[AcceptPause.connectionLimit.rawValue] == 1)
        let failures = snapshot.connectFailures.sorted { $0.reason.rawValue < $1.reason.rawValue }
        #expect(
            failures == [
                .init(service: 1, remote: "127.0.0.1:9", reason: .refused, count: 2),
                .init(service: 1, remote: "127.0.0.1:9", reason: .timeout, count: 1),
            ])
    }

    @Test func buckets_takeAnObservationAtTheirBoundInclusive() {
        let buckets = HistogramBuckets(bounds: [1, 5, 10])
        #expect(buckets.bucket(of: 0) == 0)
        #expect(buckets.bucket(of: 1) == 0)
        #expect(buckets.bucket(of: 2) == 1)
        #expect(buckets.bucket(of: 10) == 2)
        #expect(buckets.bucket(of: 11) == 3)
    }

    @Test func exposition_hasHelpAndTypeForEveryFamily_andCumulativeBuckets() throws {
        var snapshot = MetricsSnapshot(serviceNames: ["smtp"])
        snapshot.services[0].accepted = 7
        snapshot.services[0].active = 2
        snapshot.services[0].connectTime.counts[0] = 3
        snapshot.services[0].connectTime.counts[2] = 1
        snapshot.services[0].connectTime.sumMilliseconds = 1504
        snapshot.connectFailures = [.init(service: 0, remote: "[::1]:25", reason: .unreachable, count: 4)]
        snapshot.connectionLimit = 6000
        snapshot.eventLoops = 2
        snapshot.process.startTime = 1_780_000_000.25
        snapshot.process.maximumDescriptors = 20000
        snapshot.process.threads = 3
        let text = MetricsExposition.render(snapshot)
        #expect(text.contains("tcp_crossover_connections_accepted_total{service=\"smtp\"} 7\n"))
        #expect(text.contains("tcp_crossover_connections_active{service=\"smtp\"} 2\n"))
        #expect(
            text.contains(
                "tcp_crossover_connect_failures_total{service=\"smtp\",remote=\"[::1]:25\",reason=\"unreachable\"} 4\n"
            ))
        let buckets = Self.lines(text, "tcp_crossover_connect_duration_seconds_bucket")
        #expect(buckets.first == "tcp_crossover_connect_duration_seconds_bucket{service=\"smtp\",le=\"0.001\"} 3")
        #expect(buckets.contains("tcp_crossover_connect_duration_seconds_bucket{service=\"smtp\",le=\"0.005\"} 4"))
        #expect(buckets.last == "tcp_crossover_connect_duration_seconds_bucket{service=\"smtp\",le=\"+Inf\"} 4")
        #expect(text.contains("tcp_crossover_connect_duration_seconds_sum{service=\"smtp\"} 1.504\n"))
        #expect(text.contains("tcp_crossover_connect_duration_seconds_count{service=\"smtp\"} 4\n"))
        #expect(text.contains("process_start_time_seconds 1780000000.25\n"))
        #expect(text.contains("process_max_fds 20000\n"))
        #expect(text.contains("process_threads 3\n"))
        #expect(!text.contains("process_open_fds"))
        // Every sample belongs to a family announced with HELP and TYPE before it; counters end in _total.
        var announced: [String: String] = [:]
        for line in text.split(separator: "\n").map(String.init) {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                announced[String(parts[2])] = String(parts[3])
                if parts[3] == "counter" { #expect(parts[2].hasSuffix("_total"), "\(line)") }
                continue
            }
            if line.hasPrefix("#") { continue }
            let name = String(line.prefix { $0 != "{" && $0 != " " })
            let family =
                announced[name] != nil
                ? name
                : ["_bucket", "_sum", "_count"].compactMap { suffix in
                    name.hasSuffix(suffix) ? String(name.dropLast(suffix.count)) : nil
                }.first ?? name
            #expect(announced[family] != nil, "\(line)")
        }
    }

    /// The wide-segment budget's gauges: none with another `--loopback-mss`, the count alone before the first
    /// reading of TCP memory (a restart's taken-over connections hold places without one), and both after.
    @Test func exposition_givesTheWideSegmentBudget_whenThereIsOne() {
        var snapshot = MetricsSnapshot(serviceNames: [nil])
        #expect(!MetricsExposition.render(snapshot).contains("wide_segment"))
        snapshot.loopbackWideSegments = .init(open: 2, room: nil)
        var text = MetricsExposition.render(snapshot)
        #expect(text.contains("# TYPE tcp_crossover_loopback_wide_segment_connections gauge\n"))
        #expect(text.contains("\ntcp_crossover_loopback_wide_segment_connections 2\n"))
        #expect(!text.contains("wide_segment_room"))
        snapshot.loopbackWideSegments = .init(open: 3, room: 93)
        text = MetricsExposition.render(snapshot)
        #expect(text.contains("\ntcp_crossover_loopback_wide_segment_connections 3\n"))
        #expect(text.contains("# TYPE tcp_crossover_loopback_wide_segment_room gauge\n"))
        #expect(text.contains("\ntcp_crossover_loopback_wide_segment_room 93\n"))
    }

    @Test func exposition_escapesLabelValues() {
        #expect(MetricsExposition.escapedLabelValue("plain") == "plain")
        #expect(MetricsExposition.escapedLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd")
    }

    @Test func seconds_areExactAndShort() {
        #expect(MetricsExposition.seconds(milliseconds: 0) == "0")
        #expect(MetricsExposition.seconds(milliseconds: 1) == "0.001")
        #expect(MetricsExposition.seconds(milliseconds: 2500) == "2.5")
        #expect(MetricsExposition.seconds(milliseconds: 10_000) == "10")
        #expect(MetricsExposition.seconds(milliseconds: 86_400_050) == "86400.05")
    }

    @Test func requestHead_isReadOnceWhole_andBoundedInSize() {
        func parse(_ text: String, limit: Int = 8192) -> HTTPRequestHead {
            HTTPRequestHead(parsing: Array(text.utf8), limit: limit)
        }
        #expect(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n") == .incomplete)
        #expect(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == .request(method: "GET", path: "/metrics"))
        #expect(parse("GET /metrics?x=1 HTTP/1.0\n\n") == .request(method: "GET", path: "/metrics"))
        #expect(parse("POST /other HTTP/1.1\r\n\r\n") == .request(method: "POST", path: "/other"))
        #expect(parse("hello\r\n\r\n") == .malformed)
        #expect(parse("GET metrics HTTP/1.1\r\n\r\n") == .malformed)
        #expect(parse("GET /metrics SPDY/3\r\n\r\n") == .malformed)
        #expect(parse(String(repeating: "x", count: 100), limit: 100) == .tooLarge)
        #expect(
            parse("GET / HTTP/1.1\r\nX: " + String(repeating: "x", count: 100) + "\r\n\r\n", limit: 50) == .tooLarge)
    }

    @Test func endpoint_answersMetricsOnlyAtItsPath_andOnlyToGetAndHead() {
        func status(_ head: HTTPRequestHead) -> String {
            let text = String(decoding: MetricsEndpoint.response(to: head) { "m 1\n" }, as: UTF8.self)
            return String(text.split(separator: "\r\n").first ?? "")
        }
        #expect(status(.request(method: "GET", path: "/metrics")) == "HTTP/1.1 200 OK")
        #expect(status(.request(method: "HEAD", path: "/metrics")) == "HTTP/1.1 200 OK")
        #expect(status(.request(method: "POST", path: "/metrics")) == "HTTP/1.1 405 Method Not Allowed")
        #expect(status(.request(method: "GET", path: "/")) == "HTTP/1.1 404 Not Found")
        #expect(status(.malformed) == "HTTP/1.1 400 Bad Request")
        #expect(status(.tooLarge) == "HTTP/1.1 431 Request Header Fields Too Large")
        let get = String(
            decoding: MetricsEndpoint.response(to: .request(method: "GET", path: "/metrics")) { "m 1\n" },
            as: UTF8.self)
        #expect(get.hasSuffix("\r\n\r\nm 1\n"))
        #expect(get.contains("Content-Length: 4\r\n"))
        #expect(get.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"))
        let head = String(
            decoding: MetricsEndpoint.response(to: .request(method: "HEAD", path: "/metrics")) { "m 1\n" },
            as: UTF8.self)
        #expect(head.hasSuffix("\r\n\r\n"))
    }

    @Test func processStat_isReadAfterTheCommandName() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let line =
            "4242 (tcp cross) (x) S 1 4242 4242 0 -1 4194560 500 0 0 0 125 37 0 0 20 0 3 0 1234 10000000 812 "
            + "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        let stat = ProcessStat(parsing: Array(line.utf8))
        #expect(stat == ProcessStat(threads: 3, cpuTicks: 162, residentPages: 812))
        #expect(ProcessStat(parsing: Array("garbage".utf8)) == nil)
    }

    @Test func connectFailure_namesTheCommonErrnos() {
        #expect(ConnectFailure(.connectionRefused) == .refused)
        #expect(ConnectFailure(.timedOut) == .timeout)
        #expect(ConnectFailure(Errno(EHOSTUNREACH)) == .unreachable)
        #expect(ConnectFailure(Errno(ENETUNREACH)) == .unreachable)
        #expect(ConnectFailure(.tooManyOpenFiles) == .noDescriptor)
        #expect(ConnectFailure(Errno(EADDRNOTAVAIL)) == .other)
    }
}
