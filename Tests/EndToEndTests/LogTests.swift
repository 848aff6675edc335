import Foundation
import Glibc
import Testing

/// A log reader that stops reading (a standard error pipe nobody reads, a full /dev/log, a journal stream that is
/// not read) delays log lines or drops them, counted, and never holds up relaying.
@Suite struct LogTests {
    /// Makes `count` connections to `address` from four threads, each sending its number and reading it back; how
    /// many came back whole, and what the first failure was. A thread stops at its first failure, so a relay that
    /// stalls costs one timeout per thread, not one per connection.
    static func exchanges(_ count: Int, to address: TestAddress) -> (relayed: Int, firstFailure: String) {
        let results = Results()
        let threads = 4
        let deadline = Date().addingTimeInterval(300)
        let group = onThreads(threads) { thread in
            for index in stride(from: thread, to: count, by: threads) {
                do {
                    guard Date() < deadline else { throw TestFailure(message: "out of time") }
                    // Generous: on a loaded 2-core CI machine one exchange of 2,000 once took more than 10 s. A relay that
                    // stalls still fails the test, a timeout per thread.
                    let connection = try TestSocket.connect(to: address, timeout: 30)
                    let payload = Array("\(index)".utf8)
                    try connection.send(payload)
                    try connection.shutdownWrite()
                    let echoed = try connection.receiveAll()
                    guard echoed == payload else {
                        results.record(failure: "connection \(index): \(echoed.count) bytes back for \(payload.count)")
                        return
                    }
                    results.record(true)
                } catch {
                    results.record(failure: "connection \(index): \(error)")
                    return
                }
            }
        }
        group.wait()
        return (results.successes, results.firstFailure)
    }

    /// Connections per test: with lines of about 100 bytes, 8,000 are more than a 64 KiB pipe, the relay's log
    /// queue (256 KiB) and the batch its writer holds (as much again) can take, so some lines must be dropped.
    static let manyConnections = 8000

    /// Enough to fill a full /dev/log (10 datagrams) or a small journal socket buffer many times over.
    static let someConnections = 2000

    @Test func foregroundRelay_whoseStandardErrorNobodyReads_relaysEveryConnection() throws {
        let backend = try RelayTests.echoServer()
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        for fd in ends { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let log = LogReader(ends[0])
        let process = try ChildProcess(
            relayBinary, ["--local", "[::1]:0", "--remote", backend.address.description, "--foreground"],
            standardError: ends[1])
        Glibc.close(ends[1])
        defer { process.kill(signal: SIGKILL) }
        try #require(log.read(timeout: 10) { $0.text.contains("listening on ") }, "\(log.text)")
        let port = try #require(
            UInt16(log.text.components(separatedBy: "listening on [::1]:")[1].prefix(while: \.isNumber)))

        // Nobody reads standard error until every connection is done.
        let (relayed, failure) = Self.exchanges(Self.manyConnections, to: .ipv6("::1", port))
        #expect(relayed == Self.manyConnections, "first failure: \(failure)")

        // Read again: the queued lines arrive, then the count of those that were dropped.
        _ = log.read(timeout: 30) { $0.connectionLines + $0.droppedLines >= relayed }
        process.kill(signal: SIGTERM)
        _ = log.read(timeout: 10) { _ in false }
        #expect(process.waitForExit() == 0)
        let (connections, dropped) = (log.connectionLines, log.droppedLines)
        #expect(connections + dropped == relayed, "\(connections) lines, \(dropped) dropped")
        #expect(connections > 0)
        #expect(dropped > 0)
        #expect(log.text.contains("stopped: "), "\(log.text.suffix(500))")
    }

    /// A turn that ends thousands of connections at once (the relay is stopped with SIGSTOP while 8,000 clients
    /// close, then continued: its event loop then takes up to 4,096 ends per turn) writes every line to a log that
    /// keeps up (a file): the lines reach the log writer in parts, so that none is dropped for want of room in its
    /// queue. (Before, a turn handed on its lines in one piece, larger than the queue: 1,669 of 8,000 dropped.)
    @Test func burstOfEndedConnections_toALogThatKeepsUp_losesNoLine() throws {
        let echo = testBuildDirectory.appendingPathComponent("tcx-test-echo").path
        let directory = TemporaryDirectory()
        let process = try ChildProcess(
            "/usr/bin/python3", ["-c", Self.burstScript, relayBinary, echo, "\(directory.path)/relay.log", "8000"])
        #expect(process.waitForExit(timeout: 120) == 0, "\(process.standardOutput)\(process.standardError)")
        #expect(process.standardOutput.contains("connection lines 8000, dropped none"), "\(process.standardOutput)")
    }

    /// Run by `burstOfEndedConnections_…`: RELAY ECHO-SERVER LOG-FILE COUNT.
    static let burstScript = #"""
        import resource, signal, socket, subprocess, sys, time
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        relay_binary, echo, log_path, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        server = subprocess.Popen([echo], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline().strip().rsplit(":", 1)[1])
        log = open(log_path, "w")
        relay = subprocess.Popen(
            [relay_binary, "--local", "127.0.0.1:0", "--remote", "127.0.0.1:%d" % port, "--foreground", "--threads", "1",
             "--no-proxy-warning"], stderr=log)
        try:
            line = ""
            for _ in range(1000):
                line = next((l for l in open(log_path) if "listening on 127.0.0.1:" in l), "")
                if line:
                    break
                time.sleep(0.01)
            relay_port = int(line.split("listening on 127.0.0.1:")[1].split()[0].strip(","))
            clients = [socket.create_connection(("127.0.0.1", relay_port), timeout=10) for _ in range(count)]
            time.sleep(1)
            relay.send_signal(signal.SIGSTOP)
            for client in clients:
                client.close()
            time.sleep(0.5)
            relay.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = open(log_path).read()
                if text.count(" bytes up, ") + sum(int(l.split()[0]) for l in text.splitlines()
                                                   if l.endswith(" log lines dropped")) >= count:
                    break
                time.sleep(0.1)
        finally:
            relay.terminate()
            relay.wait(10)
            server.terminate()
        text = open(log_path).read()
        dropped = [l for l in text.splitlines() if l.endswith("log lines dropped")]
        print("connection lines %d, dropped %s" % (text.count(" bytes up, "), ", ".join(dropped) or "none"))
        """#

    /// At exit the relay waits a bounded time for a log that takes nothing, then exits without the lines still
    /// queued.
    @Test func foregroundRelay_whoseStandardErrorNobodyReads_stillStopsOnSIGTERM() throws {
        let backend = try RelayTests.echoServer()
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        for fd in ends { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let log = LogReader(ends[0])
        let process = try ChildProcess(
            relayBinary, ["--local", "[::1]:0", "--remote", backend.address.description, "--foreground"],
            standardError: ends[1])
        Glibc.close(ends[1])
        defer { process.kill(signal: SIGKILL) }
        try #require(log.read(timeout: 10) { $0.text.contains("listening on ") }, "\(log.text)")
        let port = try #require(
            UInt16(log.text.components(separatedBy: "listening on [::1]:")[1].prefix(while: \.isNumber)))
        // About 200 KB of lines: more than the pipe holds.
        let (relayed, failure) = Self.exchanges(Self.someConnections, to: .ipv6("::1", port))
        #expect(relayed == Self.someConnections, "first failure: \(failure)")

        process.kill(signal: SIGTERM)
        #expect(process.waitForExit(timeout: 30) == 0)
        // What the pipe held when the relay exited: the first lines, not the last ones.
        _ = log.read(timeout: 10) { _ in false }
        #expect(log.connectionLines > 0)
        #expect(log.connectionLines < relayed)
        #expect(!log.text.contains("stopped: "))
    }

    /// /dev/log is the test's own datagram socket (in a mount namespace of the relay's own, over a /dev of the
    /// test's), which it does not read until every connection is done: syslog(3) blocks once it holds 10 messages.
    @Test func backgroundRelay_whoseSyslogSocketIsFull_relaysEveryConnection() throws {
        try #require(getuid() == 0, "needs root for a mount namespace")
        let backend = try RelayTests.echoServer()
        let directory = TemporaryDirectory()
        let devices = "\(directory.path)/dev"
        try #require(mkdir(devices, 0o755) == 0)
        try #require(FileManager.default.createFile(atPath: "\(devices)/null", contents: nil))
        let socket = try datagramSocket(boundTo: "\(devices)/log")
        let log = LogReader(socket, datagrams: true)
        let port = try ActivationTests.freePort()
        let pidfile = "\(directory.path)/pid"
        let command =
            inMountNamespace(binding: [("/dev/null", "\(devices)/null"), (devices, "/dev")]) + [
                relayBinary, "--local", "[::1]:\(port)", "--remote", backend.address.description, "--pidfile", pidfile,
            ]
        let starter = try ChildProcess(command[0], Array(command.dropFirst()))
        // The command returns once the daemon listens.
        #expect(starter.waitForExit(timeout: 20) == 0, "\(starter.standardError)")
        let pid = try #require(readWholeFile(pidfile).flatMap { pid_t($0.prefix(while: \.isNumber)) })
        defer { Glibc.kill(pid, SIGKILL) }

        let (relayed, failure) = Self.exchanges(Self.someConnections, to: .ipv6("::1", port))
        if relayed != Self.someConnections {
            // Where the relay is stuck, from gdb when the machine has it.
            if FileManager.default.isExecutableFile(atPath: "/usr/bin/gdb"),
                let gdb = try? ChildProcess(
                    "/usr/bin/gdb", ["-p", "\(pid)", "-batch", "-ex", "thread apply all bt 12"])
            {
                _ = gdb.waitForExit(timeout: 60)
                print("the stuck relay's threads:\n\(gdb.standardOutput)")
            }
        }
        #expect(relayed == Self.someConnections, "first failure: \(failure); the relay's threads: \(threadStates(pid))")

        _ = log.read(timeout: 30) { $0.connectionLines + $0.droppedLines >= relayed }
        Glibc.kill(pid, SIGTERM)
        #expect(log.read(timeout: 10) { $0.text.contains("stopped: ") }, "\(log.text.suffix(500))")
        #expect(eventually(timeout: 10) { !processRuns(pid) })
        let (connections, dropped) = (log.connectionLines, log.droppedLines)
        #expect(connections + dropped == relayed, "\(connections) lines, \(dropped) dropped")
        #expect(log.text.contains("tcp-crossover[\(pid)]: [::1]:"), "\(log.text.prefix(500))")
    }

    /// Standard error is a stream socket that $JOURNAL_STREAM names (as systemd passes the journal) and that the
    /// test does not read until every connection is done; its send buffer is small, so it is full at once.
    @Test func journalStream_thatNobodyReads_relaysEveryConnection() throws {
        let backend = try RelayTests.echoServer()
        var ends: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0)
        var size: Int32 = 4096
        setsockopt(ends[1], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let log = LogReader(ends[0])
        let process = try ChildProcess(
            "/bin/sh",
            [
                "-c", "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\" \"$@\"", relayBinary,
                "--local", "[::1]:0", "--remote", backend.address.description, "--foreground",
            ],
            standardError: ends[1])
        Glibc.close(ends[1])
        defer { process.kill(signal: SIGKILL) }
        try #require(log.read(timeout: 10) { $0.text.contains("listening on ") }, "\(log.text)")
        let port = try #require(
            UInt16(log.text.components(separatedBy: "listening on [::1]:")[1].prefix(while: \.isNumber)))

        let (relayed, failure) = Self.exchanges(Self.someConnections, to: .ipv6("::1", port))
        #expect(relayed == Self.someConnections, "first failure: \(failure)")

        _ = log.read(timeout: 30) { $0.connectionLines + $0.droppedLines >= relayed }
        process.kill(signal: SIGTERM)
        _ = log.read(timeout: 10) { _ in false }
        #expect(process.waitForExit() == 0)
        let (connections, dropped) = (log.connectionLines, log.droppedLines)
        #expect(connections + dropped == relayed, "\(connections) lines, \(dropped) dropped")
        #expect(log.text.contains("<6>[::1]:"))
        #expect(log.text.contains("<5>stopped: "), "\(log.text.suffix(500))")
    }
}

/// What a log reader of the test reads from a descriptor it owns (the read end of a pipe, a stream socket, or a
/// datagram socket whose messages become lines), when the test chooses to read; it counts the per-connection lines
/// and the lines said to be dropped as they arrive.
final class LogReader {
    private let fd: Int32
    private let datagrams: Bool
    private(set) var text = ""
    /// Lines with " bytes up, ".
    private(set) var connectionLines = 0
    /// The sum of N over the "N log lines dropped" lines.
    private(set) var droppedLines = 0
    private var partial: [UInt8] = []

    init(_ fd: Int32, datagrams: Bool = false) {
        self.fd = fd
        self.datagrams = datagrams
    }

    deinit { Glibc.close(fd) }

    /// Reads until `done(self)` holds, the writer's end is closed (streams), or `timeout` seconds have passed;
    /// whether `done` held.
    func read(timeout: Double, until done: (LogReader) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !done(self) && Date() < deadline {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 100) > 0 else { continue }
            // One datagram per read from a datagram socket.
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            take(buffer[0..<count])
            if datagrams { take([UInt8(ascii: "\n")]) }
        }
        return done(self)
    }

    private func take<Bytes: Collection<UInt8>>(_ bytes: Bytes) {
        for byte in bytes {
            guard byte == UInt8(ascii: "\n") else {
                partial.append(byte)
                continue
            }
            let line = String(decoding: partial, as: UTF8.self)
            partial.removeAll(keepingCapacity: true)
            text += line + "\n"
            if line.contains(" bytes up, ") { connectionLines += 1 }
            if let range = line.range(of: " log lines dropped") {
                droppedLines += Int(line[..<range.lowerBound].split(separator: " ").last ?? "") ?? 0
            }
        }
    }
}

/// A Unix datagram socket bound to `path`, as a syslog daemon's /dev/log.
func datagramSocket(boundTo path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
    }
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bound == 0 else {
        let error = errno
        Glibc.close(fd)
        throw TestFailure("bind \(path)", errno: error)
    }
    return fd
}

/// Whether process `pid` still runs (exists and is not a zombie).
/// Where each thread of a process is: its name, state, kernel wait channel and the system call it is in
/// (/proc/PID/task/TID/syscall: the number and arguments), for the message of a test that found the process stuck.
func threadStates(_ pid: pid_t) -> String {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.sorted().map { tid in
        let base = "/proc/\(pid)/task/\(tid)"
        let name = readWholeFile("\(base)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        let state = readWholeFile("\(base)/stat")?.split(separator: ")").last?.split(separator: " ").first ?? "?"
        let channel = readWholeFile("\(base)/wchan") ?? "?"
        let call = readWholeFile("\(base)/syscall")?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        return "\(tid) \(name) \(state) wchan=\(channel) syscall=\(call)"
    }.joined(separator: "; ")
}

func processRuns(_ pid: pid_t) -> Bool {
    guard let stat = readWholeFile("/proc/\(pid)/stat"),
        let state = stat.split(separator: ")").last?.first(where: { $0 != " " })
    else { return false }
    return state != "Z"
}
