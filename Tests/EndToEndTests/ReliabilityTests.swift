import Foundation
import Glibc
import TestSupport
import Testing

/// Evidence that the relay holds: many connections at once, a long run of short ones, randomized traffic with
/// every byte and every kind of close checked, and one connection carrying a great deal both ways at once.
/// The default run keeps fast versions; `make reliability` (TCX_RELIABILITY=full) runs the sizes RELIABILITY.md
/// reports.
@Suite(.serialized) struct ReliabilityTests {
    /// A relay in the foreground on 127.0.0.1, with `descriptors` of descriptor limit (raised with prlimit, which
    /// root may do beyond the hard limit).
    static func relay(to backend: TestAddress, descriptors: Int, _ arguments: [String] = []) throws
        -> (process: ChildProcess, address: TestAddress)
    {
        let process = try ChildProcess(
            "/usr/bin/prlimit",
            [
                "--nofile=\(descriptors):\(descriptors)", relayBinary, "--local", "127.0.0.1:0", "--remote",
                backend.description, "--foreground",
            ] + arguments)
        guard process.waitForError(containing: "listening on 127.0.0.1:") else {
            throw TestFailure(message: "the relay did not start: \(process.standardError)")
        }
        let line = process.standardError.split(separator: "\n").first { $0.contains("listening on ") }!
        let port = UInt16(line.components(separatedBy: "listening on 127.0.0.1:")[1].prefix { $0.isNumber })!
        return (process, .ipv4("127.0.0.1", port))
    }

    /// Descriptors open in a process, from /proc.
    static func descriptors(_ pid: pid_t) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// As many connections as the descriptor limit allows a relay: each takes two sockets, and the hard limit
    /// here is 20,000, which root cannot raise in this sandbox (no CAP_SYS_RESOURCE). So the full run holds 9,990
    /// connections (19,980 sockets plus the relay's own descriptors); the clients are in the test process and the
    /// echo server in one of its own, each within the same limit.
    @Test func load_holdsManyConnectionsAtOnceAndExercisesEach() throws {
        let count = ReliabilityScale.pick(fast: 1_000, full: 9_990)
        try #require(raiseDescriptorLimit(to: count + 1_000), "cannot raise the descriptor limit")
        let backend = try EchoProcess()
        let (process, address) = try Self.relay(
            to: backend.address, descriptors: 20_000, ["--max-connections", String(count)])
        let before = residentKilobytes(process.pid)
        let clients = PollClients()
        try clients.open(count, to: address)
        #expect(eventually(timeout: 60) { backend.open == count }, "\(backend.open) of \(count) at the backend")
        #expect(clients.exchange(round: 1) == count)
        #expect(clients.exchange(round: 2) == count)
        let held = residentKilobytes(process.pid)
        report(
            "load: \(count) concurrent connections held and each exercised twice; relay RSS \(held) kB "
                + "(\((held - before) * 1024 / count) bytes per connection above the \(before) kB at start)")
        #expect(process.exitStatus() == nil)
        clients.closeAll()
        #expect(eventually(timeout: 60) { backend.open == 0 })
        process.kill(signal: SIGTERM)
        #expect(process.waitForExit(timeout: 30) == 0)
    }

    @Test func soak_shortConnectionsLeaveDescriptorsAndMemoryFlat() throws {
        let total = ReliabilityScale.pick(fast: 10_000, full: 200_000)
        let concurrent = ReliabilityScale.pick(fast: 200, full: 1_000)
        try #require(raiseDescriptorLimit(to: concurrent + 1_000))
        let backend = try EchoProcess()
        // Room for the held connections and the short ones in flight (the default limit is a third of the
        // descriptors).
        let (process, address) = try Self.relay(
            to: backend.address, descriptors: 2 * concurrent + 1_000, ["--max-connections", String(concurrent + 100)])
        let held = PollClients()
        try held.open(concurrent, to: address)
        #expect(held.exchange(round: 0) == concurrent)

        let failures = Counter()
        func shortConnections(_ count: Int) {
            DispatchQueue.concurrentPerform(iterations: 4) { worker in
                for index in 0..<(count / 4) {
                    do {
                        let connection = try TestSocket.connect(to: address, timeout: 10)
                        let message = Array("short \(worker) \(index)".utf8)
                        try connection.send(message)
                        try connection.shutdownWrite()
                        if try connection.receiveAll() != message { failures.add(1) }
                    } catch {
                        failures.add(1)
                    }
                }
            }
        }
        // Warm-up, so that pools and the allocator have reached their working size.
        shortConnections(2_000)
        #expect(eventually { backend.open == concurrent })
        let descriptorsBefore = Self.descriptors(process.pid)
        let memoryBefore = residentKilobytes(process.pid)
        let started = Date()
        shortConnections(total)
        let seconds = Date().timeIntervalSince(started)
        #expect(eventually { backend.open == concurrent })
        #expect(eventually { Self.descriptors(process.pid) <= descriptorsBefore })
        let descriptorsAfter = Self.descriptors(process.pid)
        let memoryAfter = residentKilobytes(process.pid)
        #expect(failures.value == 0, "\(failures.value) short connections failed")
        #expect(held.exchange(round: 1) == concurrent)
        // RSS may move by what the allocator keeps; it must not grow with the number of connections. (Under
        // AddressSanitizer freed memory waits in a quarantine before reuse, and RSS grows by design.)
        let sanitized = ProcessInfo.processInfo.environment["TCP_CROSSOVER_SANITIZER"] == "address"
        #expect(
            sanitized || memoryAfter - memoryBefore < 8_192, "RSS grew from \(memoryBefore) kB to \(memoryAfter) kB")
        report(
            "soak: \(total) short connections in \(Int(seconds)) s (\(Int(Double(total) / seconds))/s) beside "
                + "\(concurrent) held; descriptors \(descriptorsBefore) -> \(descriptorsAfter); RSS \(memoryBefore) kB -> "
                + "\(memoryAfter) kB (\(memoryAfter - memoryBefore) kB)")
        held.closeAll()
        process.kill(signal: SIGTERM)
        #expect(process.waitForExit(timeout: 30) == 0)
    }

    /// How a randomized run ends.
    enum Ending: CaseIterable {
        case bothFinish, clientAborts, serverAborts
    }

    /// Sequential randomized runs through one relay: random sizes, chunks and pauses both ways at once, clean
    /// ends in either order or a reset at a random point. Every byte is checked at its position; a clean end must
    /// arrive as an end of stream and a reset as a reset; the backend sees exactly one connection per run.
    @Test func randomizedRuns_keepEveryByteAndEveryKindOfClose() throws {
        let runs = ReliabilityScale.pick(fast: 60, full: 1_000)
        let plans = PlanBox()
        let results = ServerResults()
        let backend = try TestServer { connection in
            let plan = plans.next()
            results.append(runPeer(connection.take(), plan))
        }
        let relay = try Relay(remote: backend.address, ["--threads", "2"])
        var random = SeededRandom(seed: 20_261_126)
        var kinds: [Ending: Int] = [:]
        var halfClosedBeforeSending = 0
        for run in 0..<runs {
            let ending = Ending.allCases.randomElement(using: &random)!
            kinds[ending, default: 0] += 1
            var clientLength = [0, 1, 100, 5_000, 70_000, 300_000].randomElement(using: &random)!
            var serverLength = [0, 1, 100, 5_000, 70_000, 300_000].randomElement(using: &random)!
            if ending == .clientAborts { serverLength = max(serverLength, 1) }
            if ending == .serverAborts { clientLength = max(clientLength, 1) }
            if ending == .bothFinish && clientLength == 0 { halfClosedBeforeSending += 1 }
            let clientAbort = ending == .clientAborts ? Int.random(in: 0...clientLength, using: &random) : nil
            let serverAbort = ending == .serverAborts ? Int.random(in: 0...serverLength, using: &random) : nil
            let clientPlan = PeerPlan.random(
                &random, seed: UInt64(run) * 2, length: clientLength, abortAfter: clientAbort)
            let serverPlan = PeerPlan.random(
                &random, seed: UInt64(run) * 2 + 1, length: serverLength, abortAfter: serverAbort)
            plans.set(serverPlan)
            let connection = try TestSocket.connect(to: relay.address)
            let client = runPeer(connection.take(), clientPlan)
            #expect(eventually { results.count == run + 1 }, "run \(run): the server side did not finish")
            let server = results.last
            let label = "run \(run) (\(ending), client \(clientLength) B, server \(serverLength) B)"
            #expect(!client.timedOut && !server.timedOut, "\(label): timed out")
            // Bytes: a prefix of the sender's stream always; all of it when the sender ended cleanly.
            let clientSent = clientPlan.stream.bytes(0..<client.sent)
            let serverSent = serverPlan.stream.bytes(0..<server.sent)
            #expect(clientSent.starts(with: server.received), "\(label): bytes to the server differ")
            #expect(serverSent.starts(with: client.received), "\(label): bytes to the client differ")
            switch ending {
            case .bothFinish:
                #expect(server.received.count == clientLength && client.received.count == serverLength, "\(label)")
                #expect(client.sawEndOfStream && !client.sawReset, "\(label): the client saw no clean end")
                #expect(server.sawEndOfStream && !server.sawReset, "\(label): the server saw no clean end")
            case .clientAborts:
                #expect(client.aborted, "\(label)")
                #expect(
                    server.sawReset && !server.sawEndOfStream,
                    "\(label): the client's reset reached the server as \(server)")
            case .serverAborts:
                #expect(server.aborted, "\(label)")
                #expect(
                    client.sawReset && !client.sawEndOfStream,
                    "\(label): the server's reset reached the client as \(client)")
            }
            // Exactly one backend connection per client connection: never a second attempt.
            #expect(backend.accepted == run + 1, "\(label): \(backend.accepted) backend connections")
        }
        #expect(eventually { relay.connectionLines.count == runs })
        let lines = relay.connectionLines
        let abortedEnds = ["end=client-reset", "end=server-reset", "end=client-error", "end=server-error"]
        let aborted = lines.filter { line in abortedEnds.contains { line.contains($0) } }.count
        #expect(aborted == kinds[.clientAborts, default: 0] + kinds[.serverAborts, default: 0])
        report(
            "integrity: \(runs) randomized runs (seed 20261126): \(kinds[.bothFinish, default: 0]) clean ends "
                + "(\(halfClosedBeforeSending) with a client that half-closed before sending a byte), "
                + "\(kinds[.clientAborts, default: 0]) client resets, \(kinds[.serverAborts, default: 0]) server resets; "
                + "every byte checked, every close of the right kind, one backend connection per run")
    }

    /// One connection carrying a great deal both ways at once, every byte checked at its position.
    @Test func bulkBothWaysAtOnce_arrivesIntact() throws {
        let size = ReliabilityScale.pick(fast: 64 << 20, full: 1 << 30)
        let serverCheck = Results()
        let backend = try TestServer { connection in
            let fd = connection.take()
            let sender = Thread { sendStream(fd, ByteStream(seed: 2), size) }
            sender.start()
            serverCheck.record(receiveStream(fd, ByteStream(seed: 1), size))
            while !sender.isFinished { usleep(1_000) }
            close(fd)
        }
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address, timeout: 120)
        let fd = connection.take()
        let started = Date()
        let sender = Thread { sendStream(fd, ByteStream(seed: 1), size) }
        sender.start()
        let intact = receiveStream(fd, ByteStream(seed: 2), size)
        while !sender.isFinished { usleep(1_000) }
        close(fd)
        #expect(intact, "the bytes to the client differ or ended early")
        #expect(eventually(timeout: 60) { serverCheck.successes + serverCheck.failures == 1 })
        #expect(serverCheck.successes == 1, "the bytes to the server differ or ended early")
        let seconds = Date().timeIntervalSince(started)
        #expect(eventually { relay.connectionLines.first?.contains("\(size) bytes up, \(size) bytes down") == true })
        report(
            "bulk: \(size >> 20) MiB each way at once on one connection in \(String(format: "%.1f", seconds)) s, intact"
        )
    }
}

/// Sends `count` bytes of `stream` on a blocking socket, then shuts the write side.
private func sendStream(_ fd: Int32, _ stream: ByteStream, _ count: Int) {
    let chunk = 1 << 20
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 8)
    defer { buffer.deallocate() }
    var offset = 0
    while offset < count {
        let length = min(chunk, count - offset)
        stream.fill(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]), from: offset)
        var sent = 0
        while sent < length {
            let result = send(fd, buffer.baseAddress! + sent, length - sent, Int32(MSG_NOSIGNAL))
            if result <= 0 {
                if errno == EINTR { continue }
                return
            }
            sent += result
        }
        offset += length
    }
    shutdown(fd, Int32(SHUT_WR))
}

/// Receives until the end of stream and checks every byte against `stream`; true when exactly `count` bytes
/// arrived and all matched.
private func receiveStream(_ fd: Int32, _ stream: ByteStream, _ count: Int) -> Bool {
    let size = 1 << 20
    let received = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
    let expected = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
    defer {
        received.deallocate()
        expected.deallocate()
    }
    var offset = 0
    while true {
        let length = recv(fd, received.baseAddress, size, 0)
        if length < 0 && errno == EINTR { continue }
        if length <= 0 { return length == 0 && offset == count }
        stream.fill(UnsafeMutableRawBufferPointer(rebasing: expected[0..<length]), from: offset)
        if memcmp(received.baseAddress!, expected.baseAddress!, length) != 0 { return false }
        offset += length
    }
}

/// The plan the backend's next connection follows (runs are sequential).
final class PlanBox: @unchecked Sendable {
    private let lock = NSLock()
    private var plan: PeerPlan?

    func set(_ plan: PeerPlan) { lock.withLock { self.plan = plan } }
    func next() -> PeerPlan { lock.withLock { plan! } }
}

/// The server side's results, in order.
final class ServerResults: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [PeerResult] = []

    func append(_ result: PeerResult) { lock.withLock { results.append(result) } }
    var count: Int { lock.withLock { results.count } }
    var last: PeerResult { lock.withLock { results.last! } }
}
