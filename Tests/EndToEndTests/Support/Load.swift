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

/// An echo server for many connections at once: one thread, non-blocking sockets, poll(2). Thread-per-connection
/// servers cannot hold ten thousand connections.
final class PollEchoServer: @unchecked Sendable {
    let address: TestAddress
    private let listener: Int32
    private let lock = NSLock()
    private var _accepted = 0
    private var _open = 0
    private var stopped = false

    init() throws {
        (listener, address) = try listeningSocket(host: "127.0.0.1", backlog: 4096)
        _ = fcntl(listener, F_SETFL, O_NONBLOCK)
        Thread.detachNewThread { [self] in serve() }
    }

    deinit {
        lock.withLock { stopped = true }
    }

    var accepted: Int { lock.withLock { _accepted } }
    var open: Int { lock.withLock { _open } }

    func stop() { lock.withLock { stopped = true } }

    private func serve() {
        var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !lock.withLock({ stopped }) {
            let ready = poll(&fds, nfds_t(fds.count), 100)
            if ready <= 0 { continue }
            var closed: Set<Int> = []
            for index in fds.indices where fds[index].revents != 0 {
                let fd = fds[index].fd
                if index == 0 {
                    while true {
                        let client = accept(listener, nil, nil)
                        if client < 0 { break }
                        _ = fcntl(client, F_SETFL, O_NONBLOCK)
                        fds.append(pollfd(fd: client, events: Int16(POLLIN), revents: 0))
                        lock.withLock {
                            _accepted += 1
                            _open += 1
                        }
                    }
                    continue
                }
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count > 0 {
                    var offset = 0
                    while offset < count {
                        let written = buffer.withUnsafeBytes {
                            send(fd, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL))
                        }
                        if written <= 0 {
                            if errno == EAGAIN {
                                var wait = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                                _ = poll(&wait, 1, 100)
                                continue
                            }
                            break
                        }
                        offset += written
                    }
                } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                    close(fd)
                    closed.insert(index)
                }
            }
            if !closed.isEmpty {
                fds = fds.enumerated().filter { !closed.contains($0.offset) }.map(\.element)
                lock.withLock { _open -= closed.count }
            }
            for index in fds.indices { fds[index].revents = 0 }
        }
        for entry in fds { close(entry.fd) }
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
