import Foundation
import Glibc
import Testing

/// `--max-connections-per-client`: one client block that holds its limit cannot take the relay from another
/// client, and an over-limit connection is reset before the backend sees it.
@Suite struct ClientLimitTests {
    /// A backend that echoes what it receives until the client's end of stream; it counts what it accepted.
    static func echoBackend(host: String = "127.0.0.1") throws -> TestServer {
        try TestServer(host: host) { connection in
            while true {
                let chunk = try connection.receive()
                if chunk.isEmpty { return }
                try connection.send(chunk)
            }
        }
    }

    /// Sends `text`, reads it back, and leaves the connection open: the connection is relayed end to end.
    static func echoes(_ connection: TestSocket, _ text: String) throws -> Bool {
        try connection.send(text)
        return try connection.receive(exactly: text.utf8.count) == Array(text.utf8)
    }

    /// A limit given for one service: its second connection from a client is reset; the other service's
    /// connections from the same client are neither limited nor counted against it.
    @Test func limitOfOneService_leavesTheOtherServiceAlone() throws {
        let smtpBackend = try Self.echoBackend()
        let imapBackend = try Self.echoBackend()
        let relay = try Relay(
            local: ["smtp=127.0.0.1:0", "imap=127.0.0.1:0"], remote: "smtp=\(smtpBackend.address)",
            ["--remote", "imap=\(imapBackend.address)", "--max-connections-per-client", "smtp=1"])
        let ports = relay.listening.map { UInt16($0.split(separator: ":").last!.prefix { $0.isNumber })! }
        let smtp = TestAddress.ipv4("127.0.0.1", ports[0])
        let imap = TestAddress.ipv4("127.0.0.1", ports[1])
        let held = try TestSocket.connect(to: smtp)
        #expect(try Self.echoes(held, "EHLO"))
        var imapConnections: [TestSocket] = []
        for index in 0..<3 {
            let connection = try TestSocket.connect(to: imap)
            #expect(try Self.echoes(connection, "A\(index) NOOP"))
            imapConnections.append(connection)
        }
        let overLimit = try TestSocket.connect(to: smtp)
        #expect(overLimit.waitForEnding() == .reset)
        #expect(smtpBackend.accepted == 1)
        #expect(imapBackend.accepted == 3)
        #expect(try Self.echoes(held, "QUIT"))
        let line = "service smtp: client block 127.0.0.1/32 reached its limit of 1 connection; refusing new ones"
        #expect(eventually { relay.process.standardError.contains(line) }, "\(relay.process.standardError)")
    }

    /// IPv4 clients of a dual-stack listener: 127.0.0.2 holds its limit of 3 connections; its fourth is reset before
    /// any connection to the backend, and logged once for the episode; 127.0.0.3 is served meanwhile; once one of
    /// 127.0.0.2's connections ends, it may open one more, and no more. Clients of a denied block are refused by the
    /// rule and not counted in their block. The figures break the refusals down by reason.
    @Test func blockAtItsLimit_isRefusedBeforeTheBackend_whileAnotherClientIsServed() throws {
        let backend = try Self.echoBackend()
        let relay = try Relay(
            local: ["[::]:0"], remote: backend.address.description,
            ["--dual-stack", "--max-connections-per-client", "3", "--deny", "127.0.0.9/32"])
        let port = relay.address.port
        let server = TestAddress.ipv4("127.0.0.1", port)
        var held: [TestSocket] = []
        for index in 0..<3 {
            let connection = try TestSocket.connect(to: server, from: "127.0.0.2")
            #expect(try Self.echoes(connection, "held \(index)"))
            held.append(connection)
        }
        #expect(backend.accepted == 3)

        let overLimit = try TestSocket.connect(to: server, from: "127.0.0.2")
        #expect(overLimit.waitForEnding() == .reset)
        let other = try TestSocket.connect(to: server, from: "127.0.0.3")
        try other.send("another client")
        try other.shutdownWrite()
        #expect(try other.receiveAll() == Array("another client".utf8))
        // The first block still holds its connections, and the backend never saw the refused one.
        for (index, connection) in held.enumerated() { #expect(try Self.echoes(connection, "still \(index)")) }
        #expect(backend.accepted == 4)
        let refusing = "client block 127.0.0.2/32 reached its limit of 3 connections; refusing new ones"
        #expect(relay.process.waitForError(containing: refusing), "\(relay.process.standardError)")

        // A second refusal is the same episode: not logged again.
        let again = try TestSocket.connect(to: server, from: "127.0.0.2")
        #expect(again.waitForEnding() == .reset)
        // A denied client is refused by the rule, however often it comes, and does not use its block's count.
        for _ in 0..<4 {
            let denied = try TestSocket.connect(to: server, from: "127.0.0.9")
            #expect(denied.waitForEnding() == .reset)
        }

        // One connection of the block ends: the relay gives its count back, and the block may open one more.
        held.removeFirst().close()
        var replacement: TestSocket?
        #expect(
            try eventually {
                let connection = try TestSocket.connect(to: server, from: "127.0.0.2")
                guard connection.waitForEnding(within: 0.5) == .timedOut else { return false }
                replacement = connection
                return true
            })
        let served = try #require(replacement)
        #expect(try Self.echoes(served, "replacement"))
        let stillOver = try TestSocket.connect(to: server, from: "127.0.0.2")
        #expect(stillOver.waitForEnding() == .reset)

        relay.process.kill(signal: SIGUSR1)
        // (Not the active count: a loop that has just accepted counts a reservation for its next accept for a moment.)
        #expect(relay.process.waitForError(containing: "statistics: "), "\(relay.process.standardError)")
        let statistics = relay.process.standardError.split(separator: "\n").first { $0.contains("statistics: ") }
        // `... N accepted, R refused (P per-client limit, 4 access rules), ...`: R is the first number before
        // " refused".
        let total = (statistics ?? "").components(separatedBy: " refused").first?.split(separator: " ").last
        let perClient = (total.flatMap { Int($0) } ?? 0) - 4
        #expect(
            statistics?.contains(
                " refused (\(perClient) per-client limit, 4 access rules), 0 failed connects") == true,
            "\(statistics ?? "no statistics line")")
        // Three refusals at least (the tries to connect again while the relay ended the closed connection may add
        // more), and no per-connection line for them: the episode's lines count them.
        #expect(perClient >= 3)
        #expect(relay.connectionLines.filter { $0.contains("client block") }.isEmpty, "\(relay.connectionLines)")
        #expect(relay.connectionLines.filter { $0.contains("end=refused: by --deny 127.0.0.9/32") }.count == 4)
        #expect(relay.process.standardError.components(separatedBy: refusing).count == 2)

        // On stop, the episode still running is reported with its count, before the stop line.
        for connection in held + [served, other] { connection.close() }
        #expect(relay.stop() == 0)
        let lines = relay.process.standardError.split(separator: "\n").map(String.init)
        let ended = lines.firstIndex { $0.hasPrefix("client block 127.0.0.2/32: ") }
        let stopped = lines.firstIndex { $0.hasPrefix("stopped: ") }
        #expect(ended != nil && stopped != nil && ended! < stopped!, "\(relay.process.standardError)")
        if let ended {
            #expect(
                lines[ended].contains(" connections refused over its limit of 3 connections in "), "\(lines[ended])")
        }
    }

    /// `--max-new-connections-per-client 3/3600`: 127.0.0.2 opens three connections one after the other, each served
    /// and ended; its fourth is reset before the backend sees it, and 127.0.0.3 is served meanwhile.
    @Test func blockOverItsRate_isRefusedBeforeTheBackend_whileAnotherClientIsServed() throws {
        let backend = try Self.echoBackend()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: backend.address.description,
            ["--max-new-connections-per-client", "3/3600"])
        for index in 0..<3 {
            let connection = try TestSocket.connect(to: relay.address, from: "127.0.0.2")
            try connection.send("connection \(index)")
            try connection.shutdownWrite()
            #expect(try connection.receiveAll() == Array("connection \(index)".utf8))
        }
        let overRate = try TestSocket.connect(to: relay.address, from: "127.0.0.2")
        #expect(overRate.waitForEnding() == .reset)
        let other = try TestSocket.connect(to: relay.address, from: "127.0.0.3")
        try other.send("another client")
        try other.shutdownWrite()
        #expect(try other.receiveAll() == Array("another client".utf8))
        #expect(backend.accepted == 4)
        #expect(
            relay.process.waitForError(
                containing: "client block 127.0.0.2/32 went over its rate of 3 new connections per 3600 s; refusing"),
            "\(relay.process.standardError)")
        #expect(relay.stop() == 0)
        #expect(
            relay.process.standardError.contains(
                "client block 127.0.0.2/32: 1 connection refused over its rate of 3 new connections per 3600 s in "),
            "\(relay.process.standardError)")
        #expect(relay.process.standardError.contains("5 accepted, 1 refused (1 per-client rate), 0 failed connects"))
    }

    /// With two event loops, connections are handed from one loop to the other, and each loop gives back the
    /// counts of the connections it ends: a block that fills its limit, is refused, and lets all its connections go,
    /// round after round, is served in every round exactly up to its limit.
    @Test func countsAreGivenBack_acrossEventLoops() throws {
        let backend = try Self.echoBackend()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: backend.address.description,
            ["--threads", "2", "--max-connections-per-client", "4"])
        for round in 0..<5 {
            var held: [TestSocket] = []
            for index in 0..<4 {
                let connection = try TestSocket.connect(to: relay.address, from: "127.0.0.2")
                #expect(try Self.echoes(connection, "round \(round) connection \(index)"))
                held.append(connection)
            }
            let overLimit = try TestSocket.connect(to: relay.address, from: "127.0.0.2")
            #expect(overLimit.waitForEnding() == .reset, "round \(round)")
            if round == 4 {
                // Both loops serve some of the block's connections: a loop with three hands the fourth over.
                relay.process.kill(signal: SIGUSR1)
                #expect(relay.process.waitForError(containing: "statistics: "))
                let line = relay.process.standardError.split(separator: "\n").first { $0.contains("statistics: ") }
                let loads = (line?.components(separatedBy: "; per thread ").last ?? "").split(separator: ", ")
                #expect(loads.count == 2 && !loads.contains("0"), "\(line ?? "no statistics line")")
            }
            for connection in held {
                try connection.shutdownWrite()
                #expect(connection.waitForEnding() == .endOfStream)
            }
            // Every connection of the round has ended in the relay (and given its count back) before the next.
            #expect(eventually { relay.connectionLines.count == 4 * (round + 1) }, "round \(round)")
        }
        #expect(relay.stop() == 0)
        #expect(
            relay.process.standardError.contains("stopped: 0 active, 25 accepted, 5 refused (5 per-client limit)"),
            "\(relay.process.standardError)")
    }

    /// A dual-stack IPv6 relay in a network namespace of the test's own, whose loopback interface carries
    /// 2001:db8:1::1 and 2001:db8:1::2 (one /64, one client block), 2001:db8:2::1 (another block) and the relay's
    /// 2001:db8:ff::1. The first block holds its limit of two connections, from two addresses; a third, from either
    /// address, is refused; the other block is served meanwhile.
    @Test func ipv6Slash64_isOneClient_andAnotherSlash64IsServed() throws {
        try #require(getuid() == 0, "needs root for a network namespace")
        let namespace = try NetworkNamespace()
        let addresses = ["2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::1", "2001:db8:ff::1"]
        let routed = try namespace.run {
            let commands =
                [["link", "set", "lo", "up"]] + addresses.map { ["addr", "add", "\($0)/128", "dev", "lo", "nodad"] }
            for command in commands {
                let ip = try ChildProcess("/sbin/ip", command)
                guard ip.waitForExit() == 0 else { throw TestFailure(message: "ip \(command): \(ip.standardError)") }
            }
            // The kernel adds an address's local route after `ip addr add` returns (in a work queue): until then a
            // connect to it fails with "Network is unreachable".
            return try eventually {
                let routes = try ChildProcess("/sbin/ip", ["-6", "route", "show", "table", "local"])
                _ = routes.waitForExit()
                return addresses.allSatisfy { routes.standardOutput.contains("local \($0) dev lo") }
            }
        }
        try #require(routed, "the addresses' local routes did not appear")
        let backend = try namespace.run { try Self.echoBackend() }
        let relay = try namespace.run {
            try Relay(
                local: ["[2001:db8:ff::1]:0"], remote: backend.address.description,
                ["--max-connections-per-client", "2"])
        }
        let server = TestAddress.ipv6("2001:db8:ff::1", relay.address.port)
        let connect = { (source: String) throws -> TestSocket in
            try namespace.run { try TestSocket.connect(to: server, from: source) }
        }
        let first = try connect("2001:db8:1::1")
        #expect(try Self.echoes(first, "first"))
        let second = try connect("2001:db8:1::2")
        #expect(try Self.echoes(second, "second"))
        for source in ["2001:db8:1::1", "2001:db8:1::2"] {
            let overLimit = try connect(source)
            #expect(overLimit.waitForEnding() == .reset, "from \(source)")
        }
        let other = try connect("2001:db8:2::1")
        try other.send("another block")
        try other.shutdownWrite()
        #expect(try other.receiveAll() == Array("another block".utf8))
        #expect(try Self.echoes(first, "first again") && Self.echoes(second, "second again"))
        #expect(backend.accepted == 3)
        #expect(
            relay.process.waitForError(
                containing: "client block 2001:db8:1::/64 reached its limit of 2 connections; refusing new ones"),
            "\(relay.process.standardError)")
        first.close()
        second.close()
        #expect(relay.stop() == 0)
        #expect(
            relay.process.standardError.contains(
                "client block 2001:db8:1::/64: 2 connections refused over its limit of 2 connections in "),
            "\(relay.process.standardError)")
    }

    /// Under inetd (one process per connection, adopted at start), the option changes nothing for the connection,
    /// and the process gives the count back and exits 0 when it ends.
    @Test func inetdStyle_withTheLimit_relaysAndExitsCleanly() throws {
        let backend = try Self.echoBackend()
        let port = try ActivationTests.freePort()
        let activator = try ChildProcess(
            ActivationTests.socketActivate,
            [
                "-l", "[::1]:\(port)", "--accept", "--inetd", relayBinary, "--remote", backend.address.description,
                "--max-connections-per-client", "1",
            ])
        let connection = try ActivationTests.connectWhenListening(.ipv6("::1", port))
        try connection.send("inetd")
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == Array("inetd".utf8))
        #expect(eventually { activator.standardError.contains("died with code 0") }, "\(activator.standardError)")
        #expect(!activator.standardError.contains("died with code 1"))
    }
}

extension ClientLimitTests {
    @Test(arguments: [
        (["--max-connections-per-client", "0"], "--max-connections-per-client '0' is out of range; expected 1 to"),
        (
            ["--max-connections-per-client", "5", "--client-prefix-length", "32"],
            "--client-prefix-length '32' is not valid; expected IPV4,IPV6 prefix lengths, 1 to 32 and 1 to 128"
        ),
        (
            ["--max-connections-per-client", "5", "--client-prefix-length", "24,129"],
            "--client-prefix-length '24,129' is not valid"
        ),
        (
            ["--max-new-connections-per-client", "30"],
            "--max-new-connections-per-client '30' is not valid; expected COUNT/SECONDS"
        ),
        (
            ["--client-prefix-length", "24,56"],
            "--client-prefix-length has no effect without --max-connections-per-client"
        ),
    ])
    func badLimitOptions_getOneLineAndStatus64(arguments: [String], message: String) throws {
        let process = try ChildProcess(
            relayBinary, ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "-f"] + arguments)
        #expect(process.waitForExit() == 64)
        #expect(process.standardError.contains(message), "\(process.standardError)")
        #expect(process.standardError.filter { $0 == "\n" }.count == 1)
    }
}

extension TestSocket {
    /// Connects to `address` from the local address `source` (bound first, port 0).
    static func connect(to address: TestAddress, from source: String, timeout: Double = 20) throws -> TestSocket {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket") }
        let socket = TestSocket(fd: fd, timeout: timeout)
        let local: TestAddress = address.family == AF_INET ? .ipv4(source, 0) : .ipv6(source, 0)
        guard local.withSockAddr({ bind(fd, $0, $1) }) == 0 else { throw TestFailure("bind to \(source)") }
        guard address.withSockAddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
            throw TestFailure("connect to \(address) from \(source)")
        }
        return socket
    }

    /// How the stream ends within `seconds` (`.timedOut` if it is still open then); the socket's timeout is set
    /// back to 20 s afterwards.
    func waitForEnding(within seconds: Double) -> Ending {
        setTimeout(seconds)
        defer { setTimeout(20) }
        return waitForEnding()
    }
}

/// A network namespace of the test's own, kept by a descriptor: `run` performs work on a thread that has entered it,
/// so that the sockets made and the processes started there live in it. It disappears with the last of them.
final class NetworkNamespace: @unchecked Sendable {
    private let fd: Int32

    /// unshare(2) and setns(2), which Swift's Glibc module does not expose (they need _GNU_SOURCE), and their flag.
    private typealias NamespaceCall = @convention(c) (Int32, Int32) -> Int32
    private static let newNetwork: Int32 = 0x4000_0000  // CLONE_NEWNET
    private static func call(_ name: String) throws -> NamespaceCall {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else {
            throw TestFailure(message: "no \(name) in the C library")
        }
        return unsafeBitCast(symbol, to: NamespaceCall.self)
    }

    init() throws {
        let unshare = try Self.call("unshare")
        let made = Completion<Int32>()
        Thread.detachNewThread {
            // unshare(2) moves only this thread into the new namespace; the thread ends right after.
            guard unshare(Self.newNetwork, 0) == 0 else { return made.finish(.failure(TestFailure("unshare"))) }
            let fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
            made.finish(fd >= 0 ? .success(fd) : .failure(TestFailure("open /proc/thread-self/ns/net")))
        }
        fd = try made.wait()
    }

    deinit { close(fd) }

    /// Runs `body` on a new thread in the namespace, and returns what it returns.
    func run<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) throws -> Value {
        let setns = try Self.call("setns")
        let done = Completion<Value>()
        let fd = self.fd
        Thread.detachNewThread {
            guard setns(fd, Self.newNetwork) == 0 else { return done.finish(.failure(TestFailure("setns"))) }
            done.finish(Result { try body() })
        }
        return try done.wait()
    }
}

/// A result that one thread hands another.
private final class Completion<Value: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var result: Result<Value, any Error>?

    func finish(_ value: Result<Value, any Error>) {
        condition.withLock {
            result = value
            condition.signal()
        }
    }

    /// Waits up to 60 s.
    func wait() throws -> Value {
        let deadline = Date().addingTimeInterval(60)
        let result = condition.withLock {
            while self.result == nil && condition.wait(until: deadline) {}
            return self.result
        }
        guard let result else { throw TestFailure(message: "the namespace's thread did not finish") }
        return try result.get()
    }
}
