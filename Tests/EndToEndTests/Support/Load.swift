import Foundation
import Glibc

/// The scale of the reliability tests: the default run keeps fast versions; `TCX_RELIABILITY=full` (make
/// reliability) runs the figures RELIABILITY.md reports.
enum ReliabilityScale {
    static let full = ProcessInfo.processInfo.environment["TCX_RELIABILITY"] == "full"

    static func pick(fast: Int, full: Int) -> Int { Self.full ? full : fast }
}

/// Raises this process's descriptor limit (soft and hard, which root may) to at least `count`; false if it could
/// not be done.
func raiseDescriptorLimit(to count: Int) -> Bool {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    if limit.rlim_cur >= rlim_t(count) { return true }
    limit.rlim_cur = rlim_t(count)
    if limit.rlim_max < rlim_t(count) { limit.rlim_max = rlim_t(count) }
    return setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0
}

/// The echo server for many connections at once (`tcx-test-echo`), in a process of its own so that the
/// descriptors of its connections count against its own limit, not the test's.
final class EchoProcess {
    let process: ChildProcess
    let address: TestAddress
    /// Descriptors the server holds with no connection open.
    private let idleDescriptors: Int

    init(descriptors: Int = 20_000) throws {
        // From the test build, not from beside the relay: a sanitizer or release build of the relay has none.
        let binary = testBuildDirectory.appendingPathComponent("tcx-test-echo")
        let started = try ChildProcess("/usr/bin/prlimit", ["--nofile=\(descriptors):\(descriptors)", binary.path])
        guard eventually(timeout: 10, { started.standardOutput.contains("listening on 127.0.0.1:") }) else {
            throw TestFailure(message: "the echo server did not start: \(started.standardError)")
        }
        process = started
        let port = UInt16(started.standardOutput.components(separatedBy: "127.0.0.1:")[1].prefix { $0.isNumber })!
        address = .ipv4("127.0.0.1", port)
        idleDescriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(started.pid)/fd").count) ?? 0
    }

    /// Connections the server holds open now.
    var open: Int {
        let count = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.pid)/fd").count) ?? 0
        return count - idleDescriptors
    }
}

/// Many client connections driven from one thread with poll(2): open them all, send each a message of its own,
/// read each one's echo back.
final class PollClients {
    private(set) var fds: [Int32] = []

    deinit { closeAll() }

    /// Opens `count` connections to `address`.
    func open(_ count: Int, to address: TestAddress) throws {
        for _ in 0..<count {
            let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw TestFailure("socket after \(fds.count) connections") }
            guard address.withSockAddr({ connect(fd, $0, $1) }) == 0 else {
                let error = errno
                close(fd)
                throw TestFailure("connect after \(fds.count) connections", errno: error)
            }
            fds.append(fd)
        }
    }

    /// Sends every connection a message naming it, and checks that each receives exactly its own back; returns
    /// how many did, within `timeout` seconds.
    func exchange(round: Int, timeout: Double = 60) -> Int {
        func message(_ index: Int) -> [UInt8] { Array("conn \(index) round \(round);".utf8) }
        for (index, fd) in fds.enumerated() {
            let bytes = message(index)
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        var received = [[UInt8]](repeating: [], count: fds.count)
        var pending = Set(fds.indices)
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !pending.isEmpty && Date() < deadline {
            let order = Array(pending)
            var polls = order.map { pollfd(fd: fds[$0], events: Int16(POLLIN), revents: 0) }
            guard poll(&polls, nfds_t(polls.count), 200) > 0 else { continue }
            for (position, index) in order.enumerated() where polls[position].revents != 0 {
                let count = buffer.withUnsafeMutableBytes {
                    recv(fds[index], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT))
                }
                if count > 0 { received[index] += buffer[0..<count] }
                if count == 0 || received[index].count >= message(index).count { pending.remove(index) }
            }
        }
        return fds.indices.filter { received[$0] == message($0) }.count
    }

    func closeAll() {
        for fd in fds { close(fd) }
        fds.removeAll()
    }
}

/// The resident set size of a process, in kB (VmRSS).
func residentKilobytes(_ pid: pid_t) -> Int {
    guard let text = readWholeFile("/proc/\(pid)/status") else { return -1 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
    }
    return -1
}

/// Writes a figure for RELIABILITY.md to the test log and, in a full run, to Benchmarks/results/reliability.txt.
func report(_ line: String) {
    print("reliability: \(line)")
    guard ReliabilityScale.full else { return }
    let path = repositoryPath("Benchmarks/results/reliability.txt")
    try? FileManager.default.createDirectory(
        atPath: repositoryPath("Benchmarks/results"), withIntermediateDirectories: true)
    if let handle = FileHandle(forWritingAtPath: path) {
        handle.seekToEndOfFile()
        handle.write(Data((line + "\n").utf8))
        try? handle.close()
    } else {
        try? (line + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    }
}
