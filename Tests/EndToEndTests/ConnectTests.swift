import Foundation
import Glibc
import Testing

/// The relay with a private /etc/hosts: started through unshare(1) in a mount namespace of its own, where the test's
/// hosts file is bind-mounted over /etc/hosts, and an nsswitch.conf that looks host names up in that file only (a
/// name the file lacks fails at once, with no query to the machine's DNS server).
final class RelayWithHosts {
    let process: ChildProcess
    let port: UInt16
    private let directory = TemporaryDirectory()
    private var hostsPath: String { "\(directory.path)/hosts" }

    init(hosts: String, _ arguments: [String]) throws {
        try #require(getuid() == 0, "needs root for a mount namespace")
        let nsswitch = "\(directory.path)/nsswitch.conf"
        try "hosts: files\n".write(toFile: nsswitch, atomically: false, encoding: .utf8)
        try hosts.write(toFile: "\(directory.path)/hosts", atomically: false, encoding: .utf8)
        let command =
            inMountNamespace(binding: [("\(directory.path)/hosts", "/etc/hosts"), (nsswitch, "/etc/nsswitch.conf")])
            + [relayBinary, "--local", "127.0.0.1:0", "--foreground"] + arguments
        process = try ChildProcess(command[0], Array(command.dropFirst()))
        guard process.waitForError(containing: "listening on 127.0.0.1:") else {
            process.kill(signal: SIGKILL)
            _ = process.waitForExit()
            throw TestFailure(message: "the relay did not start: \(process.standardError)")
        }
        let line = process.standardError.split(separator: "\n").first { $0.contains("listening on ") }!
        port = UInt16(line.components(separatedBy: "listening on 127.0.0.1:")[1].prefix { $0.isNumber })!
    }

    deinit {
        process.kill(signal: SIGTERM)
        if process.waitForExit() == nil {
            process.kill(signal: SIGKILL)
            _ = process.waitForExit()
        }
    }

    /// Rewrites the hosts file in place: the bind mount keeps showing the same file.
    func rewriteHosts(_ text: String) throws {
        let handle = try #require(FileHandle(forWritingAtPath: hostsPath))
        handle.truncateFile(atOffset: 0)
        handle.write(Data(text.utf8))
        try handle.close()
    }

    /// Connects through the relay and reads what the backend says first, up to its end.
    func answer() throws -> String {
        let connection = try TestSocket.connect(to: .ipv4("127.0.0.1", port))
        try connection.shutdownWrite()
        return String(decoding: try connection.receiveAll(), as: UTF8.self)
    }
}

/// The connect phase end to end: what a refresh of the remotes' addresses keeps, the source address, the overall
/// connect deadline.
@Suite struct ConnectTests {
    /// A server that answers each connection with `name` and the address the connection came from.
    static func namedServer(_ name: String, host: String, port: UInt16 = 0) throws -> TestServer {
        try TestServer(host: host, port: port) { connection in
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(connection.fd, $0, &length) }
            }
            let peer = TestAddress(storage: storage, length: length).description
            try connection.send("\(name) from \(peer.hasPrefix("[") ? peer : String(peer.prefix { $0 != ":" }))")
        }
    }

    /// Issue 16, bug 1: with `--source 127.0.0.1`, a host name that also has an IPv6 address is used through its
    /// IPv4 addresses only, at start and after every new lookup alike (the refresh used to take the IPv6 address
    /// too, and connect to it with no source).
    @Test func source_refreshKeepsOnlyAddressesOfASourceFamily() throws {
        let first = try Self.namedServer("first", host: "127.0.0.2")
        let second = try Self.namedServer("second", host: "127.0.0.3", port: first.port)
        // Where the relay would wrongly go: also answers, so that the test says where the connection went.
        let ipv6 = try? Self.namedServer("ipv6", host: "::1", port: first.port)
        let relay = try RelayWithHosts(
            hosts: "127.0.0.2 both.tcx-test\n",
            ["--remote", "both.tcx-test:\(first.port)", "--source", "127.0.0.1", "--resolve-interval", "0.2"])
        #expect(try relay.answer().hasPrefix("first from 127.0.0.1"))
        try relay.rewriteHosts("::1 both.tcx-test\n127.0.0.3 both.tcx-test\n")
        #expect(relay.process.waitForError(containing: " now at "), "\(relay.process.standardError)")
        let line = relay.process.standardError.split(separator: "\n").first { $0.contains(" now at ") } ?? ""
        #expect(line.hasSuffix("now at 127.0.0.3:\(first.port)"), "\(line)")
        let answer = try relay.answer()
        #expect(answer.hasPrefix("second from 127.0.0.1"), "\(answer)")
        withExtendedLifetime((second, ipv6)) {}
    }

    /// Issue 16, bug 2: a host name that stops resolving keeps its last addresses for real: connections still go to
    /// it, not to the next remote in the list.
    @Test func failedLookup_remoteKeepsItsLastAddresses() throws {
        let primary = try Self.namedServer("primary", host: "127.0.0.2")
        let backup = try Self.namedServer("backup", host: "127.0.0.1")
        let relay = try RelayWithHosts(
            hosts: "127.0.0.2 primary.tcx-test\n",
            [
                "--remote", "primary.tcx-test:\(primary.port)", "--remote", backup.address.description,
                "--resolve-interval", "0.2",
            ])
        #expect(try relay.answer().hasPrefix("primary"))
        try relay.rewriteHosts("")
        #expect(
            relay.process.waitForError(containing: "the remote keeps its last addresses"),
            "\(relay.process.standardError)")
        let answer = try relay.answer()
        #expect(answer.hasPrefix("primary"), "\(answer)")
        #expect(backup.accepted == 0)
    }
}

extension ConnectTests {
    /// A listener whose backlog is full drops further handshakes: a black hole on loopback; the fillers keep the
    /// backlog full until the test ends.
    final class BlackHole {
        let server: TestServer
        private var fillers: [TestSocket] = []

        init() throws {
            server = try TestServer(backlog: 0, accepting: false) { _ in }
            // Until one handshake is dropped: the backlog is full.
            for _ in 0..<8 {
                guard let socket = try? TestSocket.connect(to: server.address, timeout: 0.3) else { break }
                fillers.append(socket)
            }
        }
    }

    /// Issue 16: every address of a failing remote got the whole --connect-timeout, with no overall deadline
    /// (three unreachable addresses: three timeouts). With `--connect-deadline`, the client is given up when it
    /// passes, and the log line says what each address did, the ones left untried too.
    @Test func connectDeadline_endsTheWholeConnectPhase() throws {
        let holes = try (0..<3).map { _ in try BlackHole() }
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: holes[0].server.address.description,
            [
                "--remote", holes[1].server.address.description, "--remote", holes[2].server.address.description,
                "--connect-timeout", "1", "--connect-deadline", "1.5",
            ])
        let connection = try TestSocket.connect(to: relay.address)
        #expect(connection.waitForEnding() == .reset)
        #expect(eventually { relay.connectionLines.count == 1 })
        let line = relay.connectionLines.first ?? ""
        let (first, second, third) = (holes[0].server.address, holes[1].server.address, holes[2].server.address)
        #expect(line.contains("end=connect-failed: connect to \(first) timed out after 1 s; "), "\(line)")
        // The second attempt had what the deadline left it.
        #expect(line.contains("; connect to \(second) timed out after "), "\(line)")
        #expect(line.hasSuffix("; \(third) not tried within the connect deadline of 1.5 s"), "\(line)")
    }
}

extension ConnectTests {
    /// A black hole on [::1] (a listener with a full backlog): IPv6 handshakes to it are dropped.
    final class BlackHole6 {
        let server: TestServer
        private var fillers: [TestSocket] = []

        init(port: UInt16) throws {
            server = try TestServer(host: "::1", port: port, backlog: 0, accepting: false) { _ in }
            // Until one handshake is dropped: the backlog is full.
            for _ in 0..<8 {
                guard let socket = try? TestSocket.connect(to: server.address, timeout: 0.3) else { break }
                fillers.append(socket)
            }
        }
    }

    /// Happy Eyeballs (RFC 8305) within one host name's addresses: its IPv6 address does not answer, and its IPv4
    /// address is tried alongside after 250 ms, long before the per-attempt timeout; the deadline, shorter than that
    /// timeout, shows that the client did not wait for it.
    @Test func happyEyeballs_aSilentAddressDoesNotHoldTheClientUntilItsTimeout() throws {
        let server = try Self.namedServer("v4", host: "127.0.0.2")
        let hole = try BlackHole6(port: server.port)
        let relay = try RelayWithHosts(
            hosts: "::1 mixed.tcx-test\n127.0.0.2 mixed.tcx-test\n",
            [
                "--remote", "mixed.tcx-test:\(server.port)", "--connect-timeout", "60", "--connect-deadline", "20",
                "--debug",
            ])
        // getaddrinfo puts ::1 first here (RFC 6724): else there would be nothing to show.
        try #require(
            relay.process.standardError.contains("([::1]:\(server.port), 127.0.0.2:\(server.port))"),
            "\(relay.process.standardError)")
        let answer = try relay.answer()
        #expect(answer.hasPrefix("v4 from 127.0.0.1"), "\(answer)")
        #expect(eventually { relay.process.standardError.contains("relaying 127.0.0.1:") })
        withExtendedLifetime(hole) {}
    }

    /// Issue 16: a failure of this machine's own (here the IPv6 --source, which is no address of this machine,
    /// cannot be bound) used to put a healthy backend in back-off. It does not: each connection tries that remote
    /// first again, then the next one.
    @Test func localFailure_putsNoRemoteInBackOff() throws {
        let unreachable = try TestServer(host: "::1") { _ in }
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: unreachable.address.description,
            [
                "--remote", backend.address.description, "--source", "2001:db8::5", "--source", "127.0.0.1",
                "--debug",
            ])
        for index in 0..<2 {
            let connection = try TestSocket.connect(to: relay.address)
            try connection.send("local \(index)")
            try connection.shutdownWrite()
            #expect(try connection.receiveAll() == Array("local \(index)".utf8))
        }
        #expect(eventually { relay.connectionLines.count == 2 })
        let failures = relay.process.standardError.components(separatedBy: "connect to \(unreachable.address) failed")
        #expect(failures.count - 1 == 2, "\(relay.process.standardError)")
        #expect(relay.process.standardError.contains("bind to the source address: Cannot assign requested address"))
        #expect(unreachable.accepted == 0)
    }
}
