import Foundation
import Glibc
import Testing

/// `--metrics`: the Prometheus endpoint, scraped and parsed by a real Prometheus parser (the Python package
/// prometheus_client, Debian's python3-prometheus-client) while known traffic flows.
@Suite struct MetricsEndpointTests {
    /// Fetches http://ADDRESS/metrics with Python's urllib and parses it with prometheus_client; prints every
    /// sample as `name{label="value",...}` (labels sorted) and its value, one JSON object.
    static let scraper = """
        import json, sys, urllib.request
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=20) as response:
            assert response.status == 200, response.status
            content_type = response.headers["Content-Type"]
            assert content_type.startswith("text/plain; version=0.0.4"), content_type
            text = response.read().decode("utf-8")
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join('%s="%s"' % item for item in sorted(sample.labels.items()))
                samples[sample.name + "{" + labels + "}"] = sample.value
        print(json.dumps(samples))
        """

    /// The relay's metrics at `address`, parsed: sample (`name{labels}`) to value.
    static func scrape(_ address: String) throws -> [String: Double] {
        let python = try ChildProcess("/usr/bin/python3", ["-c", scraper, address])
        guard python.waitForExit(timeout: 30) == 0 else {
            throw TestFailure(message: "the scrape failed: \(python.standardError)")
        }
        let object = try JSONSerialization.jsonObject(with: Data(python.standardOutput.utf8))
        guard let samples = object as? [String: Double] else {
            throw TestFailure(message: "not a dictionary of samples: \(python.standardOutput)")
        }
        return samples
    }

    /// The metrics address from the relay's start line (`; metrics on [::1]:PORT`).
    static func metricsAddress(_ relay: Relay) throws -> String {
        let start = relay.process.standardError.split(separator: "\n").first { $0.contains("listening on ") } ?? ""
        guard let range = start.range(of: "; metrics on ") else {
            throw TestFailure(message: "no metrics address in the start line: \(start)")
        }
        return String(start[range.upperBound...])
    }

    /// Connects to `port` on 127.0.0.1, sends `count` bytes, reads the echo, closes.
    static func exchange(_ port: UInt16, count: Int, seed: UInt64) throws {
        let client = try TestSocket.connect(to: .ipv4("127.0.0.1", port))
        let bytes = testBytes(count, seed: seed)
        try client.send(bytes)
        try client.shutdownWrite()
        #expect(try client.receiveAll() == bytes)
    }

    @Test func metrics_countTheTrafficSent_whileAConnectionIsOpenAndAfter() throws {
        let backend = try RelayTests.echoServer()
        let unused = try TestServer(accepting: false) { _ in }
        let closed = unused.address
        unused.stop()
        let relay = try Relay(
            local: ["127.0.0.1:0", "[::1]:0", "down=127.0.0.1:0"], remote: backend.address.description,
            ["--remote", "down=\(closed)", "--deny", "::1/128", "--metrics", "[::1]:0", "--threads", "2"])
        defer { relay.stop() }
        let metrics = try Self.metricsAddress(relay)
        let ports = relay.listening.map { UInt16($0.split(separator: ":").last!.prefix { $0.isNumber })! }

        // Three whole connections, 100 + 200 + 300 bytes each way.
        for (index, count) in [100, 200, 300].enumerated() {
            try Self.exchange(ports[0], count: count, seed: 7 + UInt64(index))
        }
        // One client refused by --deny (IPv6 loopback), one whose remote (service "down") refuses.
        #expect(try TestSocket.connect(to: .ipv6("::1", ports[1])).waitForEnding() == .reset)
        #expect(try TestSocket.connect(to: .ipv4("127.0.0.1", ports[2])).waitForEnding() == .reset)
        // One connection held open, with 50 bytes each way.
        let held = try TestSocket.connect(to: .ipv4("127.0.0.1", ports[0]))
        try held.send(testBytes(50, seed: 1))
        #expect(try held.receive(exactly: 50) == testBytes(50, seed: 1))

        let open: [String: Double] = [
            "tcp_crossover_connections_accepted_total{service=\"default\"}": 5,
            "tcp_crossover_connections_active{service=\"default\"}": 1,
            "tcp_crossover_connections_ended_total{end=\"client-closed\",service=\"default\"}": 3,
            "tcp_crossover_connections_ended_total{end=\"refused\",service=\"default\"}": 1,
            "tcp_crossover_connections_refused_total{reason=\"access-rule\",service=\"default\"}": 1,
            "tcp_crossover_connections_refused_total{reason=\"client-limit\",service=\"default\"}": 0,
            "tcp_crossover_bytes_total{direction=\"client-to-server\",service=\"default\"}": 650,
            "tcp_crossover_bytes_total{direction=\"server-to-client\",service=\"default\"}": 650,
            "tcp_crossover_connect_duration_seconds_count{service=\"default\"}": 4,
            "tcp_crossover_connection_duration_seconds_count{service=\"default\"}": 3,
            "tcp_crossover_connections_accepted_total{service=\"down\"}": 1,
            "tcp_crossover_connections_active{service=\"down\"}": 0,
            "tcp_crossover_connections_ended_total{end=\"connect-failed\",service=\"down\"}": 1,
            "tcp_crossover_connect_failures_total{reason=\"refused\",remote=\"\(closed)\",service=\"down\"}": 1,
            "tcp_crossover_connection_duration_seconds_count{service=\"down\"}": 0,
            "tcp_crossover_event_loops{}": 2,
            // The backend is on this machine: the open connection holds a place in the wide-segment budget.
            "tcp_crossover_loopback_wide_segment_connections{}": 1,
        ]
        var samples: [String: Double] = [:]
        // The figures follow the traffic within a turn of the event loop: scrape until they do (bounded).
        _ = try eventually(timeout: 20) {
            samples = try Self.scrape(metrics)
            return open.allSatisfy { samples[$0.key] == $0.value }
        }
        for (sample, value) in open.sorted(by: { $0.key < $1.key }) {
            #expect(samples[sample] == value, "\(sample)")
        }
        #expect((samples["tcp_crossover_loopback_wide_segment_room{}"] ?? 0) >= 1, "\(samples)")
        // A histogram's +Inf bucket holds every observation.
        #expect(samples["tcp_crossover_connect_duration_seconds_bucket{le=\"+Inf\",service=\"default\"}"] == 4)
        // No label holds a client's address (the clients were 127.0.0.1 and ::1 on ephemeral ports).
        #expect(!samples.keys.contains { $0.contains("\"::1") || $0.contains("[::1]") })
        #expect(!samples.keys.contains { $0.contains("127.0.0.1") && !$0.contains("remote=\"\(closed)\"") })
        // The process's own figures.
        let now = Date().timeIntervalSince1970
        let start = try #require(samples["process_start_time_seconds{}"])
        #expect(start > now - 600 && start <= now + 1, "\(start) vs \(now)")
        #expect((samples["process_max_fds{}"] ?? 0) >= 1024)
        #expect((samples["process_open_fds{}"] ?? 0) >= 10)
        // Two event loops and the metrics thread.
        #expect((samples["process_threads{}"] ?? 0) >= 3)

        held.close()
        let closedAfter: [String: Double] = [
            "tcp_crossover_connections_active{service=\"default\"}": 0,
            "tcp_crossover_connections_ended_total{end=\"client-closed\",service=\"default\"}": 4,
            "tcp_crossover_connection_duration_seconds_count{service=\"default\"}": 4,
            "tcp_crossover_bytes_total{direction=\"client-to-server\",service=\"default\"}": 650,
            "tcp_crossover_loopback_wide_segment_connections{}": 0,
        ]
        _ = try eventually(timeout: 20) {
            samples = try Self.scrape(metrics)
            return closedAfter.allSatisfy { samples[$0.key] == $0.value }
        }
        for (sample, value) in closedAfter.sorted(by: { $0.key < $1.key }) {
            #expect(samples[sample] == value, "\(sample)")
        }
        #expect(relay.stop() == 0)
    }

    @Test func metrics_aScraperThatSendsNothing_stallsNeitherRelayingNorOtherScrapers() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: backend.address.description, ["--metrics", "[::1]:0", "--threads", "1"])
        defer { relay.stop() }
        let metrics = try Self.metricsAddress(relay)
        let metricsPort = UInt16(metrics.split(separator: ":").last!)!
        let port = relay.address.port

        // A scraper that connects and sends nothing, and one that sends a request that never ends.
        let silent = try TestSocket.connect(to: .ipv6("::1", metricsPort))
        let endless = try TestSocket.connect(to: .ipv6("::1", metricsPort))
        try endless.send("GET /metrics HTTP/1.1\r\nX-Padding: " + String(repeating: "x", count: 16384))

        // Relaying goes on meanwhile, on the one event loop, and another scraper is answered.
        try Self.exchange(port, count: 1000, seed: 3)
        let samples = try Self.scrape(metrics)
        #expect(samples["tcp_crossover_connections_accepted_total{service=\"default\"}"] == 1)
        try Self.exchange(port, count: 2000, seed: 4)

        // The endless request is answered at the size limit; the silent scraper is dropped at the request
        // timeout: neither holds the endpoint.
        let answer = String(decoding: try endless.receiveAll(), as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 431 "), "\(answer)")
        #expect(silent.waitForEnding() == .reset)
        #expect(try Self.scrape(metrics)["tcp_crossover_connections_accepted_total{service=\"default\"}"] == 2)
        #expect(relay.stop() == 0)
    }

    @Test func metrics_onTheSocketSystemdPassesNamedMetrics_isServedThereAndNeverRelayed() throws {
        let backend = try RelayTests.echoServer()
        let relayedPort = try ActivationTests.freePort()
        let metricsPort = try ActivationTests.freePort()
        let activator = try ChildProcess(
            ActivationTests.socketActivate,
            [
                "-l", "[::1]:\(relayedPort)", "-l", "[::1]:\(metricsPort)", "--fdname=web:metrics", relayBinary,
                "--remote", "web=\(backend.address)",
            ])
        defer { activator.kill(signal: SIGKILL) }
        let client = try ActivationTests.connectWhenListening(.ipv6("::1", relayedPort))
        try client.send("web")
        try client.shutdownWrite()
        #expect(try client.receiveAll() == Array("web".utf8))
        // A relayed socket would have echoed the request back, which no parser takes for metrics.
        var samples: [String: Double] = [:]
        _ = try eventually(timeout: 20) {
            samples = try Self.scrape("[::1]:\(metricsPort)")
            return samples["tcp_crossover_connections_ended_total{end=\"client-closed\",service=\"web\"}"] == 1
        }
        #expect(samples["tcp_crossover_connections_ended_total{end=\"client-closed\",service=\"web\"}"] == 1)
        #expect(backend.accepted == 1)
        #expect(activator.standardError.contains("; metrics on [::1]:\(metricsPort)"), "\(activator.standardError)")
        activator.kill(signal: SIGTERM)
        #expect(activator.waitForExit() == 0)
    }

    @Test func metrics_inAProcessForOneConnection_isRefusedWithStatus64() throws {
        let backend = try RelayTests.echoServer()
        let port = try ActivationTests.freePort()
        let activator = try ChildProcess(
            ActivationTests.socketActivate,
            [
                "-l", "[::1]:\(port)", "--accept", relayBinary, "--remote", backend.address.description, "--metrics",
                "[::1]:0",
            ])
        defer { activator.kill(signal: SIGKILL) }
        let client = try ActivationTests.connectWhenListening(.ipv6("::1", port))
        _ = client.waitForEnding()
        #expect(activator.waitForError(containing: "died with code 64"), "\(activator.standardError)")
        #expect(activator.standardError.contains("--metrics [::1]:0: a process started for one connection"))
        #expect(backend.accepted == 0)
    }

    @Test(arguments: [
        (["--metrics", "9100"], "--metrics: "),
        (["--metrics", "[::1]:70000"], "--metrics: "),
        (["--metrics", "tcx-no-such-host.invalid:9100"], "cannot resolve tcx-no-such-host.invalid"),
    ])
    func badMetricsOptions_getOneLineAndAnErrorStatus(arguments: [String], message: String) throws {
        let process = try ChildProcess(
            relayBinary, ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "-f"] + arguments)
        let status = process.waitForExit()
        #expect(status == (message.hasPrefix("cannot resolve") ? 68 : 64))
        #expect(process.standardError.contains(message), "\(process.standardError)")
        #expect(process.standardError.filter { $0 == "\n" }.count == 1)
    }
}
