import Foundation
import Glibc

/// A failure in a test's own socket or process handling, with errno text.
struct TestFailure: Error, CustomStringConvertible {
    let description: String

    init(_ what: String, errno value: Int32 = errno) {
        description = "\(what): \(String(cString: strerror(value)))"
    }

    init(message: String) {
        description = message
    }
}

/// An IPv4 or IPv6 address for the tests' own sockets (deliberately not the code under test's type).
struct TestAddress: CustomStringConvertible {
    var storage = sockaddr_storage()
    var length: socklen_t

    static func ipv4(_ text: String, _ port: UInt16) -> TestAddress {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, text, &address.sin_addr)
        return TestAddress(holding: address)
    }

    static func ipv6(_ text: String, _ port: UInt16) -> TestAddress {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        inet_pton(AF_INET6, text, &address.sin6_addr)
        return TestAddress(holding: address)
    }

    static let loopback4 = "127.0.0.1"
    static let loopback6 = "::1"

    static func loopback(_ family: Int32, _ port: UInt16) -> TestAddress {
        family == AF_INET ? .ipv4(loopback4, port) : .ipv6(loopback6, port)
    }

    var family: Int32 { Int32(storage.ss_family) }

    var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            family == AF_INET
                ? UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
                : UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
        }
    }

    /// How /proc/net/tcp writes this IPv4 address and port (`0100007F:1F90` for 127.0.0.1:8080): the address as the
    /// kernel's 32-bit word in this machine's byte order, then the port.
    var procNetTCP: String {
        let word = withUnsafeBytes(of: storage) { raw in raw.load(as: sockaddr_in.self).sin_addr.s_addr }
        return String(format: "%08X:%04X", word, port)
    }

    /// The form the relay's command line takes.
    var description: String {
        var text = [CChar](repeating: 0, count: 64)
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                var address = raw.load(as: sockaddr_in.self).sin_addr
                inet_ntop(AF_INET, &address, &text, 64)
            } else {
                var address = raw.load(as: sockaddr_in6.self).sin6_addr
                inet_ntop(AF_INET6, &address, &text, 64)
            }
        }
        let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return family == AF_INET ? "\(host):\(port)" : "[\(host)]:\(port)"
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }
}

/// A blocking socket of the tests, with timeouts so that no test can hang on it.
final class TestSocket: @unchecked Sendable {
    private(set) var fd: Int32

    init(fd: Int32, timeout: Double = 20) {
        self.fd = fd
        setTimeout(timeout)
    }

    deinit { close() }

    func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    /// Hands the descriptor over to the caller, who closes it.
    func take() -> Int32 {
        defer { fd = -1 }
        return fd
    }

    func setTimeout(_ seconds: Double) {
        var value = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Connects to `address`.
    static func connect(to address: TestAddress, timeout: Double = 20) throws -> TestSocket {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket") }
        let socket = TestSocket(fd: fd, timeout: timeout)
        let result = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        guard result == 0 else { throw TestFailure("connect to \(address)") }
        return socket
    }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
            }
            if count < 0 {
                if errno == EINTR { continue }
                throw TestFailure("send")
            }
            offset += count
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Waits until `count` bytes are queued (FIONREAD), then reads them with urgent data in line (SO_OOBINLINE),
    /// asking sockatmark(3) before each receive: the bytes, and where the urgent mark was, if there was one.
    func receiveWithUrgentMark(_ count: Int) throws -> (bytes: [UInt8], mark: Int?) {
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &on, socklen_t(MemoryLayout<Int32>.size))
        _ = eventually(timeout: 5) {
            var queued: Int32 = 0
            return ioctl(fd, UInt(FIONREAD), &queued) == 0 && queued >= count
        }
        var bytes: [UInt8] = []
        var mark: Int?
        while bytes.count < count {
            if mark == nil && sockatmark(fd) == 1 { mark = bytes.count }
            let chunk = try receive(upTo: count - bytes.count)
            if chunk.isEmpty { break }
            bytes += chunk
        }
        return (bytes, mark)
    }

    /// Sends `before`, then the byte `urgent` as TCP urgent data (MSG_OOB), then `after`, corked (TCP_CORK) into
    /// one segment: the receiver finds the urgent mark with bytes queued behind it.
    func sendWithUrgentByte(before: String, urgent: UInt8, after: String) throws {
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_CORK, &on, socklen_t(MemoryLayout<Int32>.size))
        try send(before)
        var byte = urgent
        guard Glibc.send(fd, &byte, 1, Int32(MSG_OOB | MSG_NOSIGNAL)) == 1 else { throw TestFailure("send MSG_OOB") }
        try send(after)
        var off: Int32 = 0
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_CORK, &off, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Reads up to `count` bytes; empty at end of stream.
    func receive(upTo count: Int = 65536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        while true {
            let received = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if received < 0 {
                if errno == EINTR { continue }
                throw TestFailure("recv")
            }
            return Array(buffer[0..<received])
        }
    }

    /// Reads exactly `count` bytes, or throws at an early end of stream.
    func receive(exactly count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(count)
        while result.count < count {
            let chunk = try receive(upTo: min(1 << 20, count - result.count))
            if chunk.isEmpty { throw TestFailure(message: "end of stream after \(result.count) of \(count) bytes") }
            result += chunk
        }
        return result
    }

    /// Reads exactly `count` bytes, or fewer at the end of stream when `orLess`.
    func receive(exactly count: Int, orLess: Bool) throws -> [UInt8] {
        var result: [UInt8] = []
        while result.count < count {
            let chunk = try receive(upTo: count - result.count)
            if chunk.isEmpty {
                if orLess { return result }
                throw TestFailure(message: "end of stream after \(result.count) of \(count) bytes")
            }
            result += chunk
        }
        return result
    }

    /// Reads until the end of stream.
    func receiveAll() throws -> [UInt8] {
        var result: [UInt8] = []
        while true {
            let chunk = try receive(upTo: 1 << 20)
            if chunk.isEmpty { return result }
            result += chunk
        }
    }

    /// How the stream ended: a clean end (FIN), a reset, or still open when the timeout ran out.
    enum Ending: Equatable {
        case endOfStream
        case reset
        case timedOut
        case other(Int32)
    }

    /// Reads and discards until the stream ends, and says how it ended.
    func waitForEnding() -> Ending {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let received = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if received > 0 { continue }
            if received == 0 { return .endOfStream }
            switch errno {
            case EINTR: continue
            case ECONNRESET: return .reset
            case EAGAIN: return .timedOut
            case let other: return .other(other)
            }
        }
    }

    func shutdownWrite() throws {
        guard shutdown(fd, Int32(SHUT_WR)) == 0 else { throw TestFailure("shutdown") }
    }

    /// Closes with a reset (SO_LINGER 0).
    func reset() {
        var value = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    var localAddressPort: UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return TestAddress(storage: storage, length: length).port
    }
}

/// A TCP server of the tests on a port the kernel picks; each accepted connection runs `handler` on a thread of
/// its own. Counts connections, and remembers the most it held at once.
final class TestServer: @unchecked Sendable {
    let address: TestAddress
    private let listener: Int32
    private let handler: @Sendable (TestSocket) throws -> Void
    private let lock = NSLock()
    private var _accepted = 0
    private var _active = 0
    private var _mostActive = 0
    private var _failures: [String] = []
    private var stopped = false

    /// Listens on `host` (`127.0.0.1`, `::1`, `0.0.0.0`, `::`), port `port` (0: a free one); without `accepting`,
    /// connections stay in the backlog.
    init(
        host: String = TestAddress.loopback4,
        port: UInt16 = 0,
        v6Only: Bool = true,
        backlog: Int32 = 128,
        accepting: Bool = true,
        handler: @escaping @Sendable (TestSocket) throws -> Void
    ) throws {
        (listener, address) = try listeningSocket(host: host, port: port, backlog: backlog, v6Only: v6Only)
        self.handler = handler
        if accepting {
            Thread.detachNewThread { [self] in acceptLoop() }
        }
    }

    deinit { stop() }

    /// The address to give the relay: the loopback address of the listener's family when it listens on all.
    func reachableAddress() -> TestAddress {
        TestAddress.loopback(address.family, address.port)
    }

    var port: UInt16 { address.port }

    var accepted: Int { lock.withLock { _accepted } }
    var active: Int { lock.withLock { _active } }
    var mostActive: Int { lock.withLock { _mostActive } }
    var failures: [String] { lock.withLock { _failures } }

    func stop() {
        let wasStopped = lock.withLock {
            defer { stopped = true }
            return stopped
        }
        if !wasStopped { shutdown(listener, Int32(SHUT_RDWR)); Glibc.close(listener) }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            lock.withLock {
                _accepted += 1
                _active += 1
                _mostActive = max(_mostActive, _active)
            }
            let connection = TestSocket(fd: fd)
            Thread.detachNewThread { [self] in
                do {
                    try handler(connection)
                } catch {
                    lock.withLock { _failures.append("\(error)") }
                }
                connection.close()
                lock.withLock { _active -= 1 }
            }
        }
    }
}

/// A socket listening on `host`:`port` (0: a free one); returns it and the address it is bound to.
func listeningSocket(host: String, port: UInt16 = 0, backlog: Int32, v6Only: Bool = true) throws
    -> (fd: Int32, address: TestAddress)
{
    let requested: TestAddress = host.contains(":") ? .ipv6(host, port) : .ipv4(host, port)
    let fd = socket(requested.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket") }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    if requested.family == AF_INET6 {
        var v6: Int32 = v6Only ? 1 : 0
        setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &v6, socklen_t(MemoryLayout<Int32>.size))
    }
    guard requested.withSockAddr({ bind(fd, $0, $1) }) == 0, listen(fd, backlog) == 0 else {
        let error = errno
        Glibc.close(fd)
        throw TestFailure("bind and listen on \(requested)", errno: error)
    }
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, TestAddress(storage: storage, length: length))
}

/// Deterministic test data: `count` bytes from a seed.
func testBytes(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var bytes = [UInt8](repeating: 0, count: count)
    var index = 0
    while index < count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        var word = state
        for _ in 0..<min(8, count - index) {
            bytes[index] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            index += 1
        }
    }
    return bytes
}

/// Waits until `condition` holds, checking every 10 ms, for at most `timeout` seconds.
func eventually(timeout: Double = 10, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(10_000)
    }
    return try condition()
}

/// Runs `body(index)` for each index in `0..<count`, each on a thread of its own; wait on the group returned.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> DispatchGroup {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        Thread.detachNewThread {
            defer { group.leave() }
            body(index)
        }
    }
    return group
}

extension TestAddress {
    /// A sockaddr_in or sockaddr_in6, copied into the storage (in an extension: the memberwise initializer stays).
    fileprivate init<Address>(holding address: Address) {
        self.init(length: socklen_t(MemoryLayout<Address>.size))
        withUnsafeMutableBytes(of: &storage) { raw in
            withUnsafeBytes(of: address) { raw.copyMemory(from: $0) }
        }
    }
}
