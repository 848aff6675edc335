import Foundation
import Glibc
import Testing

/// What a backend on this machine sees through the relay: the warning at start.
@Suite struct SecurityTests {
    static let warning = "without --proxy-protocol: the server there sees every client as a local one"

    /// How many lines of `text` carry the warning.
    static func warnings(_ text: String) -> Int {
        text.split(separator: "\n").filter { $0.contains(warning) }.count
    }

    @Test func localRemoteWithoutProxyProtocol_isWarnedOfOnce_atStart() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(local: ["[::1]:0", "127.0.0.1:0"], remote: backend.address.description)
        defer { relay.stop() }
        let output = relay.process.standardError
        #expect(Self.warnings(output) == 1, "\(output)")
        #expect(output.contains("relaying to \(backend.address), on this machine, \(Self.warning)"), "\(output)")
        #expect(output.contains("see SECURITY in tcp-crossover(8) or the README, or give --no-proxy-warning"))
        // Connections do not repeat it.
        _ = try ActivationTests.exchange(relay.address, Array("x".utf8))
        _ = try ActivationTests.exchange(relay.address, Array("y".utf8))
        #expect(eventually { relay.connectionLines.count == 2 })
        #expect(Self.warnings(relay.process.standardError) == 1, "\(relay.process.standardError)")
    }

    @Test(arguments: [["--proxy-protocol", "v2"], ["--proxy-protocol", "v1"], ["--no-proxy-warning"]])
    func localRemote_withProxyProtocolOrTheFlag_isNotWarnedOf(arguments: [String]) throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(family: AF_INET6, remote: backend.address, arguments)
        defer { relay.stop() }
        #expect(Self.warnings(relay.process.standardError) == 0, "\(relay.process.standardError)")
    }

    /// In a network namespace of its own with 192.0.2.1 on its loopback interface (not a loopback address): a
    /// remote at that address of the machine is warned of, one at 192.0.2.2, elsewhere, is not.
    @Test func remoteAtAnotherAddressOfThisMachine_isWarnedOf_anotherMachineIsNot() throws {
        try #require(getuid() == 0, "needs root for a network namespace")
        let script = """
            set -eu
            ip link set lo up
            ip addr add 192.0.2.1/32 dev lo
            for remote in 192.0.2.1:25 192.0.2.2:25; do
                timeout -s TERM 5 "$0" --local '[::1]:0' --remote "$remote" --foreground 2>&1 &
                relay=$!
                sleep 1
                kill "$relay" 2> /dev/null || true
                wait "$relay" || true
            done
            """
        let process = try ChildProcess("/usr/bin/unshare", ["-n", "/bin/bash", "-c", script, relayBinary])
        #expect(process.waitForExit(timeout: 30) == 0, "\(process.standardError)")
        let output = process.standardOutput
        #expect(output.components(separatedBy: "listening on").count == 3, "\(output)")
        #expect(output.contains("relaying to 192.0.2.1:25, on this machine, \(Self.warning)"), "\(output)")
        #expect(Self.warnings(output) == 1, "\(output)")
    }

    /// Serving a listening socket from systemd (Accept=no) warns once; a process per connection (Accept=yes) never.
    @Test func socketActivation_warnsWhenServingTheListener_butNotPerConnection() throws {
        let backend = try ActivationTests.bannerEchoServer()
        let listenerPort = try ActivationTests.freePort()
        let listener = try ChildProcess(
            ActivationTests.socketActivate,
            ["-l", "[::1]:\(listenerPort)", relayBinary, "--remote", backend.address.description])
        _ = try ActivationTests.connectWhenListening(.ipv6("::1", listenerPort))
        #expect(listener.waitForError(containing: "serving [::1]:\(listenerPort)"), "\(listener.standardError)")
        #expect(Self.warnings(listener.standardError) == 1, "\(listener.standardError)")
        listener.kill(signal: SIGTERM)
        _ = listener.waitForExit()

        let perConnectionPort = try ActivationTests.freePort()
        let perConnection = try ChildProcess(
            ActivationTests.socketActivate,
            ["-l", "[::1]:\(perConnectionPort)", "--accept", relayBinary, "--remote", backend.address.description])
        _ = try ActivationTests.connectWhenListening(.ipv6("::1", perConnectionPort))
        #expect(
            try ActivationTests.exchange(.ipv6("::1", perConnectionPort), Array("x".utf8))
                == Array("220 ready\r\nx".utf8))
        #expect(perConnection.waitForError(containing: "1 bytes up, 12 bytes down"), "\(perConnection.standardError)")
        #expect(eventually { perConnection.standardError.components(separatedBy: "died with code 0").count == 3 })
        #expect(Self.warnings(perConnection.standardError) == 0, "\(perConnection.standardError)")
        perConnection.kill(signal: SIGTERM)
        _ = perConnection.waitForExit()
    }
}
