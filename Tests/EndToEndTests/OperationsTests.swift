import Foundation
import Glibc
import Testing

/// Running like a daemon people trust: limits, descriptor exhaustion, idle connections, signals, privileges.
@Suite struct OperationsTests {
    /// A server that holds each connection until the client ends it, answering "held" at once.
    static func holdingServer() throws -> TestServer {
        try TestServer { connection in
            try connection.send("held\n")
            _ = try connection.receiveAll()
            try connection.shutdownWrite()
        }
    }

    /// User plus system CPU time of a process, in seconds (from /proc/PID/stat).
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let text = readWholeFile("/proc/\(pid)/stat") else { return -1 }
        let fields = text.split(separator: ")").last!.split(separator: " ")
        // After the command: state is field 0; utime and stime are fields 11 and 12.
        let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    @Test func maxConnections_holdsTheBackendAtTheLimitAndServesTheRestLater() throws {
        // Counted inside each backend connection, between the request and the answer: a connection can only end,
        // and make room for another, after its answer, so the count is exact (the server's own count of open
        // sockets lags behind its threads).
        let busy = Gauge()
        let backend = try TestServer { connection in
            _ = try connection.receive()
            busy.enter()
            Thread.sleep(forTimeInterval: 0.3)
            busy.leave()
            try connection.send("done")
            try connection.shutdownWrite()
        }
        let relay = try Relay(remote: backend.address, ["--max-connections", "5"])
        let results = Results()
        let group = onThreads(8) { _ in
            do {
                let connection = try TestSocket.connect(to: relay.address)
                try connection.send("request")
                results.record(try connection.receiveAll() == Array("done".utf8))
            } catch {
                results.record(false)
            }
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        #expect(results.successes == 8)
        #expect(busy.most == 5, "at most \(busy.most) at once at the backend")
        #expect(backend.accepted == 8)
    }

    /// With 40 descriptors and 60 clients, accept fails with EMFILE: the relay pauses, does not spin, logs the
    /// episode, and serves new clients once the others have gone.
    @Test func outOfDescriptors_pausesAcceptingWithoutSpinningAndRecovers() throws {
        let backend = try Self.holdingServer()
        let process = try ChildProcess(
            "/usr/bin/prlimit",
            [
                "--nofile=40:40", relayBinary, "--local", "127.0.0.1:0", "--remote", backend.address.description,
                "--foreground", "--max-connections", "1000", "--threads", "2",
            ])
        #expect(process.waitForError(containing: "listening on "))
        let line = process.standardError.split(separator: "\n").first { $0.contains("listening on ") }!
        let port = UInt16(line.components(separatedBy: "listening on 127.0.0.1:")[1].prefix { $0.isNumber })!
        var held: [TestSocket] = []
        for _ in 0..<60 {
            held.append(try TestSocket.connect(to: .ipv4("127.0.0.1", port), timeout: 2))
        }
        #expect(process.waitForError(containing: "Too many open files; accepting pauses"))
        // Saturated: CPU time over two seconds stays far below what a spinning loop would use.
        let before = Self.cpuSeconds(process.pid)
        Thread.sleep(forTimeInterval: 2)
        let used = Self.cpuSeconds(process.pid) - before
        #expect(used < 0.5, "\(used) s of CPU in 2 s while out of descriptors")
        #expect(process.exitStatus() == nil)
        // One line per episode, not per failed accept: a second episode is one only if the first was logged as over
        // (a connection got its two descriptors in between, which 40 descriptors now and then allow).
        let pauses = process.standardError.components(separatedBy: "accepting pauses").count - 1
        let recoveries = process.standardError.components(separatedBy: "descriptors are available again").count - 1
        #expect(
            pauses == recoveries + 1, "\(pauses) pause lines for \(recoveries) recoveries: \(process.standardError)")
        // The held clients leave; a new one is served.
        for socket in held { socket.close() }
        held.removeAll()
        let fresh = try TestSocket.connect(to: .ipv4("127.0.0.1", port))
        fresh.setTimeout(20)
        #expect(try fresh.receive(exactly: 5) == Array("held\n".utf8))
        try fresh.shutdownWrite()
        #expect(try fresh.receiveAll().isEmpty)
        #expect(process.waitForError(containing: "descriptors are available again: accepting on every listener"))
        // No client was dropped for want of a descriptor: each waited, then was relayed.
        let lines = { process.standardError.split(separator: "\n").filter { $0.contains(" bytes up, ") } }
        #expect(eventually { lines().count == 61 }, "\(lines().count) connections logged")
        #expect(!lines().contains { $0.contains("end=connect-failed") })
        process.kill(signal: SIGTERM)
        #expect(process.waitForExit() == 0)
    }

    @Test func idleTimeout_closesTheIdleConnectionAndKeepsTheActiveOne() throws {
        let backend = try TestServer { connection in
            while true {
                let chunk = try connection.receive()
                if chunk.isEmpty { break }
                try connection.send(chunk)
            }
            try connection.shutdownWrite()
        }
        let relay = try Relay(remote: backend.address, ["--idle-timeout", "1.5"])
        let idle = try TestSocket.connect(to: relay.address)
        let active = try TestSocket.connect(to: relay.address)
        // The active connection exchanges a byte every 0.2 s for 3 s, twice the idle time.
        for _ in 0..<15 {
            try active.send("x")
            #expect(try active.receive(exactly: 1) == Array("x".utf8))
            Thread.sleep(forTimeInterval: 0.2)
        }
        // By now, twice the idle time on, the idle connection has been reset and the active one still works.
        idle.setTimeout(0.5)
        #expect(idle.waitForEnding() == .reset)
        try active.send("still here")
        #expect(try active.receive(exactly: 10) == Array("still here".utf8))
        #expect(relay.connectionLines.contains { $0.contains("end=idle-timeout") })
        #expect(relay.connectionLines.count == 1)
    }

    @Test func sigterm_letsTheTransferInFlightFinishRefusesNewOnesAndRemovesThePidfile() throws {
        let backend = try TestServer { connection in
            _ = try connection.receive()
            // About 1.5 s of sending, so that SIGTERM arrives in the middle.
            let block = testBytes(1 << 16, seed: 11)
            for _ in 0..<30 {
                try connection.send(block)
                Thread.sleep(forTimeInterval: 0.05)
            }
            try connection.shutdownWrite()
        }
        let directory = TemporaryDirectory()
        let pidfile = "\(directory.path)/relay.pid"
        let relay = try Relay(local: ["127.0.0.1:0"], remote: backend.address.description, ["--pidfile", pidfile])
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send("go")
        _ = try connection.receive(exactly: 1 << 16)
        relay.process.kill(signal: SIGTERM)
        #expect(relay.process.waitForError(containing: "stopping: no new connections, 1 still active"))
        #expect(throws: TestFailure.self) { try TestSocket.connect(to: relay.address, timeout: 2) }
        let rest = try connection.receiveAll()
        #expect(rest.count == 29 << 16)
        connection.close()
        #expect(relay.process.waitForExit() == 0)
        #expect(!FileManager.default.fileExists(atPath: pidfile))
        #expect(relay.connectionLines.first?.contains("end=server-closed") == true)
    }

    /// Connections keep arriving while SIGTERM does: some land in the same turn of a loop as the stop request,
    /// after its listeners closed. Each relay must stop cleanly, and once it says it takes no new connections, a
    /// connection must be refused.
    @Test func sigterm_amidAStreamOfNewConnections_stopsCleanlyAndRefusesAfterSayingSo() throws {
        let backend = try TestServer { connection in _ = try connection.receiveAll() }
        for round in 0..<5 {
            let relay = try Relay(remote: backend.address, ["--threads", round % 2 == 0 ? "1" : "2"])
            let address = relay.address
            let connected = Counter()
            let clients = onThreads(3) { _ in
                // Until the relay refuses: at most 2,000 connections or 10 s per client.
                let deadline = Date().addingTimeInterval(10)
                for _ in 0..<2_000 where Date() < deadline {
                    guard let socket = try? TestSocket.connect(to: address, timeout: 2) else { return }
                    connected.add(1)
                    socket.close()
                }
            }
            #expect(eventually(timeout: 5) { connected.value >= 50 })
            relay.process.kill(signal: SIGTERM)
            #expect(
                relay.process.waitForError(containing: "stopping: no new connections"),
                "\(relay.process.standardError.split(separator: "\n").filter { !$0.contains(" bytes up, ") })")
            #expect(throws: TestFailure.self) { try TestSocket.connect(to: address, timeout: 2) }
            #expect(clients.wait(timeout: .now() + 15) == .success)
            #expect(relay.process.waitForExit() == 0, "round \(round): \(relay.process.standardError)")
        }
    }

    @Test func secondSigterm_stopsAtOnce() throws {
        let backend = try Self.holdingServer()
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        #expect(try connection.receive(exactly: 5) == Array("held\n".utf8))
        relay.process.kill(signal: SIGTERM)
        #expect(relay.process.waitForError(containing: "1 still active"))
        relay.process.kill(signal: SIGTERM)
        #expect(relay.process.waitForExit(timeout: 5) == 0)
        #expect(connection.waitForEnding() == .reset)
        #expect(relay.connectionLines.first?.contains("end=shutdown") == true)
    }

    @Test func shutdownTimeout_endsConnectionsThatDoNotFinish() throws {
        let backend = try Self.holdingServer()
        let relay = try Relay(remote: backend.address, ["--shutdown-timeout", "0.5"])
        let connection = try TestSocket.connect(to: relay.address)
        #expect(try connection.receive(exactly: 5) == Array("held\n".utf8))
        relay.process.kill(signal: SIGTERM)
        #expect(relay.process.waitForExit(timeout: 5) == 0)
        #expect(connection.waitForEnding() == .reset)
    }

    @Test func signals_usr1LogsTheFiguresAndHupDoesNotKill() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send(testBytes(1500))
        try connection.shutdownWrite()
        _ = try connection.receiveAll()
        #expect(eventually { relay.connectionLines.count == 1 })
        relay.process.kill(signal: SIGHUP)
        relay.process.kill(signal: SIGUSR1)
        #expect(
            relay.process.waitForError(
                containing: "statistics: 0 active, 1 accepted, 0 refused, 0 failed connects, 1.5 kB up, 1.5 kB down"),
            "\(relay.process.standardError)")
        #expect(relay.process.exitStatus() == nil)
        #expect(relay.stop() == 0)
    }

    /// SIGUSR2 asks for a hand-over through systemd's file descriptor store on the next stop; a standalone relay has
    /// none, so it says so and goes on, and SIGTERM then drains as before (SIGUSR2 used to kill the process).
    @Test func signals_usr2WithoutAStoreIsIgnoredAndTheStopDrains() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send(testBytes(1500))
        #expect(try connection.receive(exactly: 1500) == testBytes(1500))
        relay.process.kill(signal: SIGUSR2)
        #expect(
            relay.process.waitForError(containing: "SIGUSR2 ignored: no file descriptor store"),
            "\(relay.process.standardError)")
        #expect(relay.process.exitStatus() == nil)
        relay.process.kill(signal: SIGTERM)
        #expect(relay.process.waitForError(containing: "no new connections"), "\(relay.process.standardError)")
        // The open connection still carries bytes, then ends cleanly, and the relay exits.
        try connection.send(testBytes(700))
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == testBytes(700))
        #expect(relay.process.waitForExit(timeout: 30) == 0)
    }

    /// A burst of connections wakes one event loop, which accepts them all: it hands some to the other loop, so
    /// that long-lived connections are spread over the threads. The SIGUSR1 line gives each thread's count.
    @Test func burstOfConnections_isSpreadOverTheThreads() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(remote: backend.address, ["--threads", "2"])
        // Opened all at once, before any is used: they wait in the backlog together.
        let connections = try (0..<32).map { _ in try TestSocket.connect(to: relay.address) }
        for connection in connections {
            try connection.send([1, 2, 3])
            #expect(try connection.receive(exactly: 3) == [1, 2, 3])
        }
        relay.process.kill(signal: SIGUSR1)
        #expect(relay.process.waitForError(containing: "; per thread "))
        let line = try #require(relay.process.standardError.split(separator: "\n").first { $0.contains("per thread") })
        let counts = line.components(separatedBy: "per thread ")[1].components(separatedBy: ", ").compactMap { Int($0) }
        #expect(counts.count == 2 && counts.reduce(0, +) == 32, "\(line)")
        // The loops hand over until neither has more than a few connections above the other (see the engine).
        #expect(counts.allSatisfy { $0 >= 12 }, "\(line)")
        // Each loop counts what its connections do in a tally of its own; the line gives their sums. A loop counts a
        // turn's bytes just after sending them, so a line asked for at once may miss the last echo: ask again.
        let sums = "32 active, 32 accepted, 0 refused, 0 failed connects, 96 B up, 96 B down"
        let summed = eventually {
            if relay.process.standardError.contains(sums) { return true }
            relay.process.kill(signal: SIGUSR1)
            usleep(100_000)
            return false
        }
        #expect(summed, "\(relay.process.standardError.split(separator: "\n").filter { $0.contains("statistics") })")
        for connection in connections { connection.close() }
        #expect(relay.stop() == 0)
    }

    /// `--user nobody` after binding: the relay runs with nobody's uid, gid and groups, cannot regain root, and its
    /// pidfile (in a directory only root may write) is still removed on exit, by the parent that keeps it.
    @Test func user_dropsPrivilegesAndThePidfileIsStillRemoved() throws {
        try #require(getuid() == 0, "needs root to drop privileges")
        let backend = try RelayTests.echoServer()
        let directory = TemporaryDirectory()
        chmod(directory.path, 0o755)
        let pidfile = "\(directory.path)/relay.pid"
        let keeper = try ChildProcess(
            relayBinary,
            [
                "--local", "127.0.0.1:0", "--remote", backend.address.description, "--foreground", "--user", "nobody",
                "--pidfile", pidfile,
            ])
        #expect(keeper.waitForError(containing: "listening on "))
        let text = try String(contentsOfFile: pidfile, encoding: .utf8)
        let relayPID = try #require(pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(relayPID != keeper.pid)
        let status = try #require(readWholeFile("/proc/\(relayPID)/status"))
        func field(_ name: String) -> String {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map {
                $0.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
            } ?? ""
        }
        let nobody = getpwnam("nobody")!.pointee
        #expect(field("Uid") == Array(repeating: "\(nobody.pw_uid)", count: 4).joined(separator: " "))
        #expect(field("Gid") == Array(repeating: "\(nobody.pw_gid)", count: 4).joined(separator: " "))
        #expect(field("Groups") == "\(nobody.pw_gid)")
        #expect(field("CapEff") == "0000000000000000")
        #expect(field("CapPrm") == "0000000000000000")
        // It relays.
        let line = keeper.standardError.split(separator: "\n").first { $0.contains("listening on ") }!
        let port = UInt16(line.components(separatedBy: "listening on 127.0.0.1:")[1].prefix { $0.isNumber })!
        let connection = try TestSocket.connect(to: .ipv4("127.0.0.1", port))
        try connection.send("as nobody")
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == Array("as nobody".utf8))
        #expect(!keeper.standardError.contains("running as root"), "\(keeper.standardError)")
        // SIGTERM to the pid in the pidfile, as an init script sends it.
        kill(relayPID, SIGTERM)
        #expect(keeper.waitForExit() == 0)
        #expect(!FileManager.default.fileExists(atPath: pidfile))
    }

    /// `--group` alone leaves the relay root, which can take any group back: nothing would be dropped, so it is
    /// refused at start, before anything is bound, with one line.
    @Test func group_withoutUser_asRoot_isRefusedAtStart() throws {
        try #require(getuid() == 0, "the refusal concerns root")
        let process = try ChildProcess(
            relayBinary, ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--foreground", "--group", "nogroup"])
        #expect(process.waitForExit() == 64)
        #expect(
            process.standardError
                == "tcp-crossover: --group without --user: the relay would still run as root, which can take any "
                + "group back; give --user as well\n")
    }

    /// `--user nobody --group users`: the group replaces the user's own in every group ID and is the only
    /// supplementary group (nobody belongs to no other), and neither root's user nor its group can be regained.
    @Test func group_withUser_isTheGroupOfEveryGroupID() throws {
        try #require(getuid() == 0, "needs root to drop privileges")
        let users = try #require(getgrnam("users")).pointee.gr_gid
        let nobody = try #require(getpwnam("nobody")).pointee
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: backend.address.description, ["--user", "nobody", "--group", "users"])
        let status = try #require(readWholeFile("/proc/\(relay.process.pid)/status"))
        func field(_ name: String) -> String {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map {
                $0.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
            } ?? ""
        }
        #expect(field("Uid") == Array(repeating: "\(nobody.pw_uid)", count: 4).joined(separator: " "))
        #expect(field("Gid") == Array(repeating: "\(users)", count: 4).joined(separator: " "))
        #expect(field("Groups") == "\(users)")
        #expect(field("CapEff") == "0000000000000000")
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send("as nobody:users")
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == Array("as nobody:users".utf8))
        #expect(relay.stop() == 0)
    }

    @Test func user_whenUnknown_failsAtStartWithStatus67() throws {
        let result = try ChildProcess(
            relayBinary, ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "-f", "--user", "no-such-user-xyz"])
        #expect(result.waitForExit() == 67)
        #expect(result.standardError == "tcp-crossover: --user: there is no user 'no-such-user-xyz'\n")
    }

    @Test(arguments: [
        (["--keepalive", "0"], "--keepalive '0' is not valid"),
        (["--keepalive", "10,5"], "--keepalive '10,5' is not valid"),
        (["--max-connections", "0"], "--max-connections '0' is out of range"),
        (["--idle-timeout", "never"], "--idle-timeout 'never'"),
        (["--shutdown-timeout=-2"], "--shutdown-timeout '-2'"),
        (["--user", ""], "--user '' is not a user or group name"),
    ])
    func badOperationsOptions_getStatus64(arguments: [String], message: String) throws {
        let process = try ChildProcess(relayBinary, ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1"] + arguments)
        #expect(process.waitForExit() == 64)
        #expect(process.standardError.contains(message), "\(process.standardError)")
    }

    /// Keepalive timers, read from /proc/net/tcp and tcp6: for each TCP socket inode, the timer kind (2 is
    /// keepalive) and the seconds until it fires.
    static func socketTimers() -> [String: (kind: Int, seconds: Double)] {
        var timers: [String: (Int, Double)] = [:]
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = readWholeFile(table) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                guard fields.count > 9 else { continue }
                let timer = fields[5].split(separator: ":")
                let kind = Int(timer[0], radix: 16) ?? 0
                let ticks = Double(Int(timer[1], radix: 16) ?? 0)
                timers[String(fields[9])] = (kind, ticks / Double(sysconf(Int32(_SC_CLK_TCK))))
            }
        }
        return timers
    }

    /// The inodes of a process's sockets, from /proc/PID/fd.
    static func socketInodes(_ pid: pid_t) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return entries.compactMap { entry in
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(entry)")) ?? ""
            guard target.hasPrefix("socket:[") else { return nil }
            return String(target.dropFirst(8).dropLast())
        }
    }

    @Test func keepalive_runsOnBothSocketsOfAConnection() throws {
        let backend = try Self.holdingServer()
        let relay = try Relay(remote: backend.address, ["--keepalive", "77,7,3", "--threads", "1"])
        let connection = try TestSocket.connect(to: relay.address)
        #expect(try connection.receive(exactly: 5) == Array("held\n".utf8))
        func keepalives() -> [(kind: Int, seconds: Double)] {
            let timers = Self.socketTimers()
            return Self.socketInodes(relay.process.pid).compactMap { timers[$0] }.filter { $0.kind == 2 }
        }
        // The accepted socket inherits keepalive from the listener at once; the socket to the server gets it once
        // the connection has lived 10 s (most connections end sooner and are spared the calls).
        #expect(keepalives().count == 1, "\(keepalives())")
        #expect(eventually(timeout: 15) { keepalives().count == 2 }, "\(keepalives())")
        // Timers of the idle time given (77 s), counting down: not the kernel's default (7,200 s), nor yet the
        // probe interval (7 s). How far down they are depends on how busy the machine was while the test waited.
        #expect(keepalives().allSatisfy { $0.seconds > 7 && $0.seconds <= 77 }, "\(keepalives())")
    }

    /// Once the server has ended its stream, keepalive towards it stops: its probes could only draw a reset from a
    /// server's machine that has forgotten the finished connection. The client's socket keeps its keepalive.
    @Test func keepalive_stopsTowardsAServerThatHasEnded() throws {
        let ended = DispatchSemaphore(value: 0)
        let backend = try TestServer { connection in
            // The server ends when told, not on its own: not after 20 s, the sockets' default timeout, when a loaded
            // machine makes the test slow.
            connection.setTimeout(120)
            try connection.send("held\n")
            _ = ended.wait(timeout: .now() + 120)
            try connection.shutdownWrite()
            _ = try connection.receiveAll()
        }
        let relay = try Relay(remote: backend.address, ["--keepalive", "77,7,3", "--threads", "1"])
        let connection = try TestSocket.connect(to: relay.address)
        #expect(try connection.receive(exactly: 5) == Array("held\n".utf8))
        func keepalives() -> [(kind: Int, seconds: Double)] {
            let timers = Self.socketTimers()
            return Self.socketInodes(relay.process.pid).compactMap { timers[$0] }.filter { $0.kind == 2 }
        }
        #expect(eventually(timeout: 15) { keepalives().count == 2 }, "\(keepalives())")
        // The relay's socket to the server: the one of its sockets whose peer's port is the server's.
        let towardsServer = String(format: ":%04X", backend.address.port)
        let inodes = Set(Self.socketInodes(relay.process.pid))
        let serverSocket = readWholeFile("/proc/net/tcp")?.split(separator: "\n").map { $0.split(separator: " ") }
            .first { $0.count > 9 && $0[2].hasSuffix(towardsServer) && inodes.contains(String($0[9])) }?[9]
        let inode = try #require(serverSocket.map(String.init))
        #expect(eventually { Self.socketTimers()[inode]?.kind == 2 }, "\(Self.socketTimers()[inode].debugDescription)")
        ended.signal()
        #expect(try connection.receiveAll().isEmpty)
        // Nothing is sent to the server, so no other timer can stand in for its keepalive timer there.
        #expect(eventually { Self.socketTimers()[inode].map { $0.kind != 2 } ?? false }, "\(keepalives())")
        try connection.shutdownWrite()
        #expect(eventually { relay.connectionLines.first?.hasSuffix("end=server-closed") == true })
    }

    @Test func keepaliveOff_leavesNoTimer() throws {
        let backend = try Self.holdingServer()
        let relay = try Relay(remote: backend.address, ["--keepalive", "off", "--threads", "1"])
        let connection = try TestSocket.connect(to: relay.address)
        #expect(try connection.receive(exactly: 5) == Array("held\n".utf8))
        let timers = Self.socketTimers()
        let keepalives = Self.socketInodes(relay.process.pid).compactMap { timers[$0] }.filter { $0.kind == 2 }
        #expect(keepalives.isEmpty, "\(keepalives)")
    }
}

/// How many threads are inside a section now, and the most there have been at once.
final class Gauge: @unchecked Sendable {
    private let lock = NSLock()
    private var current = 0
    private var highest = 0

    func enter() {
        lock.withLock {
            current += 1
            highest = max(highest, current)
        }
    }

    func leave() { lock.withLock { current -= 1 } }

    var most: Int { lock.withLock { highest } }
}
