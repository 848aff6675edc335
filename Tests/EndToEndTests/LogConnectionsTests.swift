import Foundation
import Glibc
import TCPCrossover
import Testing

/// `--log-connections no`: no line per connection on a busy relay, while the figures are counted.
@Suite struct LogConnectionsTests {
    @Test func logConnectionsNo_writesNoConnectionLines_andTheFiguresStillCount() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: backend.address.description,
            ["--log-connections", "no", "--metrics", "[::1]:0"])
        defer { relay.stop() }
        let metrics = try MetricsEndpointTests.metricsAddress(relay)
        for seed in 1...2 { try MetricsEndpointTests.exchange(relay.address.port, count: 1500, seed: UInt64(seed)) }
        var samples: [String: Double] = [:]
        _ = try eventually(timeout: 20) {
            samples = try MetricsEndpointTests.scrape(metrics)
            return samples["tcp_crossover_connections_ended_total{end=\"client-closed\",service=\"default\"}"] == 2
        }
        #expect(samples["tcp_crossover_connections_ended_total{end=\"client-closed\",service=\"default\"}"] == 2)
        relay.process.kill(signal: SIGUSR1)
        #expect(
            relay.process.waitForError(
                containing: "statistics: 0 active, 2 accepted, 0 refused, 0 failed connects, 3.0 kB up, 3.0 kB down"),
            "\(relay.process.standardError)")
        #expect(relay.connectionLines.isEmpty, "\(relay.connectionLines)")
        #expect(relay.stop() == 0)
        // The start and stop lines are still written.
        #expect(relay.process.standardError.contains("stopped: 0 active, 2 accepted"))
    }

    @Test func logConnectionsYes_isTheDefault_andAnythingElseIsStatus64() throws {
        let process = try ChildProcess(
            relayBinary, ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "-f", "--log-connections", "off"])
        #expect(process.waitForExit() == 64)
        #expect(
            process.standardError.contains("--log-connections 'off' is not valid; expected yes or no"),
            "\(process.standardError)")
        #expect(process.standardError.filter { $0 == "\n" }.count == 1)
        #expect(try Options(remote: ["127.0.0.1:1"]).configuration().relay.service.logConnections)
        let quiet = try Options(remote: ["127.0.0.1:1"], logConnections: ["no"]).configuration()
        #expect(!quiet.relay.service.logConnections)
    }
}
