import CLinux
import Glibc

// The one place where tcp-crossover calls libc. Every function makes one call, retries it on EINTR where that is
// safe, and turns -1/errno into a thrown `Errno` or, for non-blocking calls, into `IOResult.wouldBlock`.

/// Calls `body` until it does not fail with EINTR; returns its value or the errno it failed with.
@inline(__always)
func valueOrErrno<Value: FixedWidthInteger>(
    retryOnInterrupt: Bool = true,
    _ body: () -> Value
) throws(Errno) -> Value {
    while true {
        let value = body()
        if value != -1 { return value }
        let error = Errno.current
        if retryOnInterrupt && error == .interrupted { continue }
        throw error
    }
}

/// As `valueOrErrno`, with EAGAIN/EWOULDBLOCK returned as `.wouldBlock`.
@inline(__always)
func nonBlocking<Value: FixedWidthInteger>(_ body: () -> Value) throws(Errno) -> IOResult<Int> {
    while true {
        let value = body()
        if value >= 0 { return .processed(Int(value)) }
        let error = errno
        if error == EINTR { continue }
        if error == EAGAIN || error == EWOULDBLOCK { return .wouldBlock }
        throw Errno(error)
    }
}

public enum Syscall {
    // MARK: descriptors

    /// close(2). Never retried: on Linux the descriptor is released even when close reports EINTR, and a retry
    /// could close a descriptor another thread has just been given.
    static func close(_ fd: CInt) {
        _ = Glibc.close(fd)
    }

    /// read(2).
    static func read(_ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> IOResult<Int> {
        try nonBlocking { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// write(2).
    static func write(_ fd: CInt, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> IOResult<Int> {
        try nonBlocking { Glibc.write(fd, buffer.baseAddress, buffer.count) }
    }

    /// write(2) of all of `text`'s UTF-8 to a blocking descriptor.
    static func writeAll(_ fd: CInt, _ text: inout String) throws(Errno) {
        let result = text.withUTF8 { all in
            Result { () throws(Errno) in
                var offset = 0
                while offset < all.count {
                    let rest = UnsafeRawBufferPointer(start: all.baseAddress! + offset, count: all.count - offset)
                    guard case .processed(let count) = try write(fd, rest) else { throw Errno.wouldBlock }
                    offset += count
                }
            }
        }
        try result.get()
    }

    /// write(2) of all of `bytes` to a blocking descriptor.
    static func writeAll(_ fd: CInt, _ bytes: [UInt8]) throws(Errno) {
        var offset = 0
        while offset < bytes.count {
            let result = bytes.withUnsafeBytes { all in
                Result { () throws(Errno) in try write(fd, UnsafeRawBufferPointer(rebasing: all[offset...])) }
            }
            guard case .processed(let count) = try result.get() else { throw Errno.wouldBlock }
            offset += count
        }
    }

    /// dup2(2).
    static func duplicate(_ fd: CInt, onto target: CInt) throws(Errno) {
        _ = try valueOrErrno { Glibc.dup2(fd, target) }
    }

    /// fcntl(2) F_DUPFD_CLOEXEC: a second descriptor for the same open file.
    static func duplicate(_ fd: CInt) throws(Errno) -> CInt {
        try valueOrErrno { Glibc.fcntl(fd, F_DUPFD_CLOEXEC, 0) }
    }

    /// open(2) with O_CLOEXEC added.
    static func open(_ path: String, _ flags: CInt, mode: mode_t = 0o644) throws(Errno) -> CInt {
        try valueOrErrno { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    /// fcntl(2) F_SETFD FD_CLOEXEC.
    static func setCloseOnExec(_ fd: CInt) throws(Errno) {
        _ = try valueOrErrno { Glibc.fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }

    /// fcntl(2) F_SETFL O_NONBLOCK.
    static func setNonBlocking(_ fd: CInt) throws(Errno) {
        let flags = try valueOrErrno { Glibc.fcntl(fd, F_GETFL) }
        if flags & O_NONBLOCK == 0 {
            _ = try valueOrErrno { Glibc.fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        }
    }

    /// fstat(2): whether `fd` is open, and whether it is a socket.
    static func fileKind(_ fd: CInt) -> FileKind {
        var status = stat()
        guard Glibc.fstat(fd, &status) == 0 else { return .closed }
        return status.st_mode & S_IFMT == S_IFSOCK ? .socket : .other
    }

    enum FileKind { case closed, socket, other }

    /// fstat(2) and getsockopt(2) SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN: what an inherited descriptor is.
    static func describe(_ fd: CInt) -> DescriptorKind {
        switch fileKind(fd) {
        case .closed: return .closed
        case .other: return .notSocket
        case .socket: break
        }
        let domain = (try? option(fd, SOL_SOCKET, SO_DOMAIN)) ?? -1
        let type = (try? option(fd, SOL_SOCKET, SO_TYPE)) ?? -1
        let listening = ((try? option(fd, SOL_SOCKET, SO_ACCEPTCONN)) ?? 0) != 0
        let family: DescriptorKind.Family =
            switch domain {
            case AF_INET: .ipv4
            case AF_INET6: .ipv6
            case AF_UNIX: .unix
            default: .other
            }
        return .socket(family: family, stream: type == CInt(SOCK_STREAM.rawValue), listening: listening)
    }

    /// fstat(2): whether `fd` is a regular file, and how many names (hard links) it has.
    static func regularFile(_ fd: CInt) throws(Errno) -> (regular: Bool, links: UInt64) {
        var status = stat()
        _ = try valueOrErrno { Glibc.fstat(fd, &status) }
        return (status.st_mode & S_IFMT == S_IFREG, UInt64(status.st_nlink))
    }

    /// fstat(2): device and inode, to compare two descriptors or one with $JOURNAL_STREAM.
    static func identity(_ fd: CInt) -> (device: UInt64, inode: UInt64)? {
        var status = stat()
        guard Glibc.fstat(fd, &status) == 0 else { return nil }
        return (UInt64(status.st_dev), UInt64(status.st_ino))
    }

    // MARK: files

    /// flock(2) LOCK_EX | LOCK_NB; false when another process holds the lock.
    static func tryLock(_ fd: CInt) throws(Errno) -> Bool {
        do {
            _ = try valueOrErrno { tcx_lock(fd) }
            return true
        } catch  where error == .wouldBlock {
            return false
        }
    }

    /// ftruncate(2).
    static func truncate(_ fd: CInt, to length: Int) throws(Errno) {
        _ = try valueOrErrno { Glibc.ftruncate(fd, off_t(length)) }
    }

    /// pread(2) of up to `count` bytes from the start of the file.
    static func readStart(_ fd: CInt, count: Int) throws(Errno) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let length = try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(Errno) in try valueOrErrno { Glibc.pread(fd, buffer.baseAddress, buffer.count, 0) } }
        }.get()
        bytes.removeLast(count - length)
        return bytes
    }

    /// pwrite(2) of all of `bytes` at the start of the file.
    static func writeStart(_ fd: CInt, _ bytes: [UInt8]) throws(Errno) {
        let written = try bytes.withUnsafeBytes { buffer in
            Result { () throws(Errno) in try valueOrErrno { Glibc.pwrite(fd, buffer.baseAddress, buffer.count, 0) } }
        }.get()
        if written != bytes.count { throw Errno(EIO) }
    }

    /// unlink(2).
    static func unlink(_ path: String) throws(Errno) {
        _ = try valueOrErrno { Glibc.unlink(path) }
    }

    /// chdir(2).
    static func changeDirectory(_ path: String) throws(Errno) {
        _ = try valueOrErrno { Glibc.chdir(path) }
    }

    // MARK: pipes and splice

    /// pipe2(2) with O_CLOEXEC, non-blocking unless asked: (read end, write end).
    static func pipe(blocking: Bool = false) throws(Errno) -> (read: CInt, write: CInt) {
        var fds: (CInt, CInt) = (-1, -1)
        _ = try withUnsafeMutablePointer(to: &fds) { (pair) throws(Errno) in
            try pair.withMemoryRebound(to: CInt.self, capacity: 2) { (fds) throws(Errno) in
                try valueOrErrno { tcx_pipe(fds, blocking ? 0 : 1) }
            }
        }
        return fds
    }

    /// fcntl(2) F_SETPIPE_SZ, then F_GETPIPE_SZ: the capacity the pipe has afterwards. The kernel may refuse the
    /// size (above /proc/sys/fs/pipe-max-size, or past the user's pipe-user-pages-soft): the pipe then keeps
    /// the size it has.
    static func setPipeCapacity(_ fd: CInt, _ bytes: Int) -> Int {
        _ = tcx_set_pipe_size(fd, CInt(clamping: bytes))
        return Int(tcx_get_pipe_size(fd))
    }

    /// fcntl(2) F_GETPIPE_SZ: the pipe's capacity.
    static func pipeCapacity(_ fd: CInt) -> Int {
        Int(tcx_get_pipe_size(fd))
    }

    /// splice(2) of up to `count` bytes from `source` to `destination`, one of which is a pipe; non-blocking.
    @inline(__always)
    static func splice(from source: CInt, to destination: CInt, count: Int) throws(Errno) -> IOResult<Int> {
        try nonBlocking { tcx_splice(source, destination, count, tcx_splice_flags) }
    }

    // MARK: sockets

    /// socket(2) of type SOCK_STREAM, non-blocking, close-on-exec.
    static func streamSocket(family: CInt) throws(Errno) -> CInt {
        try valueOrErrno { Glibc.socket(family, CInt(SOCK_STREAM.rawValue) | tcx_sock_flags, 0) }
    }

    /// setsockopt(2) with an int value.
    static func setOption(_ fd: CInt, _ level: CInt, _ name: CInt, _ value: CInt) throws(Errno) {
        var value = value
        _ = try valueOrErrno {
            Glibc.setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size))
        }
    }

    /// getsockopt(2) of an int value.
    static func option(_ fd: CInt, _ level: CInt, _ name: CInt) throws(Errno) -> CInt {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        _ = try valueOrErrno { Glibc.getsockopt(fd, level, name, &value, &length) }
        return value
    }

    /// setsockopt(2) TCP_NODELAY, SO_OOBINLINE and, with `keepalive`, SO_KEEPALIVE with TCP_KEEPIDLE,
    /// TCP_KEEPINTVL and TCP_KEEPCNT. Set on a listening socket, they are inherited by every socket it accepts.
    /// SO_OOBINLINE keeps TCP urgent data (Telnet's and FTP's Synch, rlogin's control bytes) in the stream: without
    /// it, recv(2) skips the urgent byte, and the relayed stream would miss it.
    static func setConnectionOptions(_ fd: CInt, keepalive: Keepalive?) throws(Errno) {
        try setOption(fd, CInt(IPPROTO_TCP), TCP_NODELAY, 1)
        try setOption(fd, SOL_SOCKET, SO_OOBINLINE, 1)
        guard let keepalive else { return }
        try setKeepalive(fd, keepalive)
    }

    /// setsockopt(2) TCP_CONGESTION, `algorithm` (reno by default) for a socket whose peer is on this machine
    /// (`SocketAddress.isOnThisMachine`); set on a listening socket bound to a loopback address, the sockets it
    /// accepts inherit it. Such a connection goes through the loopback interface, which has no queue to congest, so a
    /// congestion control algorithm can only slow it, and BBR, a common choice of `net.ipv4.tcp_congestion_control`,
    /// does: it paces every segment, and it shrinks its window on the retransmissions that loopback's reordering makes
    /// look necessary (the relay's leg to an iperf3 server on 127.0.0.1 kept a window of 14 to 24 segments and
    /// carried 18 Gbit/s with BBR; with reno, 200 segments and 33 Gbit/s). Reno is built into every kernel, allowed
    /// to unprivileged processes, and neither paces nor models the path. Best effort: a socket that refuses it keeps
    /// the system's algorithm, which works, only slower. Returns whether the socket took it.
    @discardableResult
    static func useCongestionControl(_ fd: CInt, _ algorithm: CongestionControl) -> Bool {
        (try? setCongestionControl(fd, algorithm)) != nil
    }

    /// setsockopt(2) TCP_CONGESTION: ENOENT for an algorithm the kernel does not have, EPERM for one that
    /// `net.ipv4.tcp_allowed_congestion_control` does not allow a process without CAP_NET_ADMIN.
    static func setCongestionControl(_ fd: CInt, _ algorithm: CongestionControl) throws(Errno) {
        var name = algorithm.name
        let result = name.withUTF8 { bytes in
            Glibc.setsockopt(fd, CInt(IPPROTO_TCP), TCP_CONGESTION, bytes.baseAddress, socklen_t(bytes.count))
        }
        if result != 0 { throw Errno.current }
    }

    /// setsockopt(2) TCP_QUICKACK: off, the socket delays its ACKs to send them with data (set before connect(2),
    /// the handshake's last ACK waits for the first bytes); on, it acknowledges at once again.
    static func setQuickAck(_ fd: CInt, _ on: Bool) throws(Errno) {
        try setOption(fd, CInt(IPPROTO_TCP), TCP_QUICKACK, on ? 1 : 0)
    }

    /// setsockopt(2) SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT.
    static func setKeepalive(_ fd: CInt, _ keepalive: Keepalive) throws(Errno) {
        try setOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1)
        try setOption(fd, CInt(IPPROTO_TCP), TCP_KEEPIDLE, CInt(keepalive.idle))
        try setOption(fd, CInt(IPPROTO_TCP), TCP_KEEPINTVL, CInt(keepalive.interval))
        try setOption(fd, CInt(IPPROTO_TCP), TCP_KEEPCNT, CInt(keepalive.count))
    }

    /// setsockopt(2) SO_KEEPALIVE off: no more probes on a socket whose peer has ended its stream (see
    /// `EventLoop.stopKeepalive`).
    static func stopKeepalive(_ fd: CInt) throws(Errno) {
        try setOption(fd, SOL_SOCKET, SO_KEEPALIVE, 0)
    }

    /// ioctl(2) SIOCOUTQ: the bytes sent on a TCP socket that its peer has not acknowledged yet (its FIN counts as
    /// one). It still answers after a reset, for the bytes the reset discarded. 0 when the call fails.
    static func unacknowledgedBytes(_ fd: CInt) -> Int {
        var count: CInt = 0
        return tcx_unacknowledged(fd, &count) == 0 ? Int(count) : 0
    }

    /// setsockopt(2) SO_LINGER {on, 0 s}: close(2) then sends a reset instead of a FIN.
    static func setResetOnClose(_ fd: CInt) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = Glibc.setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }

    /// bind(2).
    static func bind(_ fd: CInt, to address: SocketAddress) throws(Errno) {
        _ = try address.withSockAddr { (pointer, length) throws(Errno) in
            try valueOrErrno { Glibc.bind(fd, pointer, length) }
        }
    }

    /// setsockopt(2) IP_BIND_ADDRESS_NO_PORT, then bind(2) to `address` with port 0: the connection leaves from
    /// that address, and the port is chosen at connect time, so that binding first does not use up ports.
    static func bindForConnect(_ fd: CInt, to address: SocketAddress) throws(Errno) {
        try setOption(fd, CInt(IPPROTO_IP), tcx_ip_bind_address_no_port, 1)
        var local = address
        local.port = 0
        try bind(fd, to: local)
    }

    /// Whether `address` is one of this machine's own: a socket of its family, bound to it with
    /// `bindForConnect` (port 0, no port taken), which the kernel allows for its own addresses only. False when the
    /// socket cannot be made.
    static func isOwnAddress(_ address: SocketAddress) -> Bool {
        guard let fd = try? streamSocket(family: address.addressFamily) else { return false }
        defer { close(fd) }
        return (try? bindForConnect(fd, to: address)) != nil
    }

    /// listen(2).
    static func listen(_ fd: CInt, backlog: CInt) throws(Errno) {
        _ = try valueOrErrno { Glibc.listen(fd, backlog) }
    }

    /// accept4(2), non-blocking and close-on-exec: the new descriptor and the peer's address.
    @inline(__always)
    static func accept(_ fd: CInt) throws(Errno) -> IOResult<AcceptedSocket> {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try withUnsafeMutablePointer(to: &storage) { (pointer) throws(Errno) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(Errno) in
                try nonBlocking { tcx_accept(fd, address, &length) }
            }
        }
        guard case .processed(let accepted) = result else { return .wouldBlock }
        return .processed(AcceptedSocket(fd: CInt(accepted), peer: SocketAddress(storage) ?? .unspecified))
    }

    struct AcceptedSocket: Equatable {
        let fd: CInt
        let peer: SocketAddress
    }

    /// connect(2) on a non-blocking socket: true when connected at once, false when in progress.
    static func connect(_ fd: CInt, to address: SocketAddress) throws(Errno) -> Bool {
        let result = address.withSockAddr { pointer, length in Glibc.connect(fd, pointer, length) }
        if result == 0 { return true }
        let error = Errno.current
        // A connect interrupted by a signal goes on in the background, as EINPROGRESS does; retrying it would fail
        // with EALREADY.
        if error == .inProgress || error == .interrupted { return false }
        throw error
    }

    /// getsockopt(2) SO_ERROR: the pending error of a socket, such as the result of a non-blocking connect.
    static func pendingError(_ fd: CInt) -> Errno? {
        do {
            let value = try option(fd, SOL_SOCKET, SO_ERROR)
            return value == 0 ? nil : Errno(value)
        } catch {
            return error
        }
    }

    /// getsockname(2).
    static func localAddress(_ fd: CInt) throws(Errno) -> SocketAddress {
        try socketAddress { address, length in Glibc.getsockname(fd, address, length) }
    }

    /// getpeername(2).
    static func peerAddress(_ fd: CInt) throws(Errno) -> SocketAddress {
        try socketAddress { address, length in Glibc.getpeername(fd, address, length) }
    }

    private static func socketAddress(
        _ body: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt
    ) throws(Errno) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try withUnsafeMutablePointer(to: &storage) { (pointer) throws(Errno) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(Errno) in
                try valueOrErrno { body(address, &length) }
            }
        }
        guard let address = SocketAddress(storage) else { throw Errno(EAFNOSUPPORT) }
        return address
    }

    /// recv(2), non-blocking.
    @inline(__always)
    static func receive(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> IOResult<Int> {
        try nonBlocking { Glibc.recv(fd, buffer.baseAddress, buffer.count, 0) }
    }

    /// send(2) with MSG_NOSIGNAL, non-blocking; with `more`, MSG_MORE too: TCP holds the bytes back for what
    /// follows (the FIN of a shutdown(2) goes out in the same segment).
    @inline(__always)
    static func send(_ fd: CInt, _ buffer: UnsafeRawBufferPointer, more: Bool) throws(Errno) -> IOResult<Int> {
        let flags = more ? CInt(MSG_NOSIGNAL) | CInt(MSG_MORE) : CInt(MSG_NOSIGNAL)
        return try nonBlocking { Glibc.send(fd, buffer.baseAddress, buffer.count, flags) }
    }

    /// send(2) of one byte with MSG_OOB and MSG_NOSIGNAL, non-blocking: TCP sends it as urgent data.
    static func sendUrgent(_ fd: CInt, _ byte: UInt8) throws(Errno) -> IOResult<Int> {
        var byte = byte
        return try nonBlocking { Glibc.send(fd, &byte, 1, CInt(MSG_NOSIGNAL) | CInt(MSG_OOB)) }
    }

    /// sockatmark(3): whether the next byte to receive is the urgent byte (the socket reads it in line).
    static func atUrgentMark(_ fd: CInt) throws(Errno) -> Bool {
        try valueOrErrno { Glibc.sockatmark(fd) } == 1
    }

    /// shutdown(2) SHUT_WR: sends a FIN, keeps reading.
    static func shutdownWrite(_ fd: CInt) throws(Errno) {
        _ = try valueOrErrno { Glibc.shutdown(fd, CInt(SHUT_WR)) }
    }

    // MARK: address conversion

    /// inet_pton(3) for AF_INET: the four bytes of an IPv4 address in dotted-quad form.
    static func parseIPv4(_ text: String) -> in_addr? {
        var address = in_addr()
        return inet_pton(AF_INET, text, &address) == 1 ? address : nil
    }

    /// inet_pton(3) for AF_INET6.
    static func parseIPv6(_ text: String) -> in6_addr? {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1 ? address : nil
    }

    /// inet_ntop(3).
    static func format(_ family: CInt, _ address: UnsafeRawPointer) -> String {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { text in
            guard inet_ntop(family, address, text.baseAddress!, socklen_t(text.count)) != nil else { return "?" }
            return String(cString: text.baseAddress!)
        }
    }

    /// if_nametoindex(3); nil for an unknown interface.
    static func interfaceIndex(_ name: String) -> UInt32? {
        let index = if_nametoindex(name)
        return index == 0 ? nil : index
    }

    /// if_indextoname(3); nil for an unknown index.
    static func interfaceName(_ index: UInt32) -> String? {
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(index, &name) != nil else { return nil }
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// getaddrinfo(3) for TCP, without AI_ADDRCONFIG (so that names of loopback addresses resolve on a host
    /// without other addresses): every address of `host`, in the resolver's order, with `port` set.
    static func resolve(_ host: String, port: UInt16) -> Result<[SocketAddress], ResolutionError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = CInt(SOCK_STREAM.rawValue)
        hints.ai_protocol = CInt(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &list)
        guard status == 0 else {
            let reason =
                status == EAI_SYSTEM ? Errno.current.description : String(cString: gai_strerror(status))
            return .failure(ResolutionError(host: host, reason: reason))
        }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var entry = list
        while let current = entry {
            if let raw = current.pointee.ai_addr, var address = SocketAddress(raw) {
                address.port = port
                if !addresses.contains(address) { addresses.append(address) }
            }
            entry = current.pointee.ai_next
        }
        if addresses.isEmpty { return .failure(ResolutionError(host: host, reason: "no IPv4 or IPv6 address")) }
        return .success(addresses)
    }

    /// strerror(3).
    static func errorString(_ value: CInt) -> String {
        String(cString: strerror(value))
    }

    // MARK: epoll, eventfd, signalfd

    /// epoll_create1(2) with EPOLL_CLOEXEC.
    static func epollCreate() throws(Errno) -> CInt {
        try valueOrErrno { epoll_create1(CInt(EPOLL_CLOEXEC)) }
    }

    /// epoll_ctl(2).
    static func epollControl(_ epoll: CInt, _ operation: CInt, _ fd: CInt, events: UInt32, data: UInt64)
        throws(Errno)
    {
        var event = epoll_event()
        event.events = events
        event.data.u64 = data
        _ = try valueOrErrno { epoll_ctl(epoll, operation, fd, &event) }
    }

    /// epoll_wait(2) into `events`; returns how many were filled, 0 on timeout or EINTR.
    @inline(__always)
    static func epollWait(_ epoll: CInt, _ events: UnsafeMutableBufferPointer<epoll_event>, timeout: CInt)
        throws(Errno) -> Int
    {
        let count = epoll_wait(epoll, events.baseAddress, CInt(events.count), timeout)
        if count >= 0 { return Int(count) }
        if errno == EINTR { return 0 }
        throw Errno.current
    }

    /// eventfd(2), non-blocking, close-on-exec.
    static func eventFD() throws(Errno) -> CInt {
        try valueOrErrno { eventfd(0, CInt(EFD_NONBLOCK | EFD_CLOEXEC)) }
    }

    /// write(2) of 1 to an eventfd.
    static func signalEvent(_ fd: CInt) {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fd, $0.baseAddress, 8) }
    }

    /// read(2) of an eventfd's counter, resetting it.
    static func drainEvent(_ fd: CInt) {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(fd, $0.baseAddress, 8) }
    }

    /// signalfd(2) for `signals`, non-blocking, close-on-exec.
    static func signalFD(_ signals: [CInt]) throws(Errno) -> CInt {
        var set = signalSet(signals)
        return try valueOrErrno { signalfd(-1, &set, CInt(SFD_NONBLOCK | SFD_CLOEXEC)) }
    }

    /// read(2) of one `signalfd_siginfo`: the number of a pending signal, or nil when none is.
    static func readSignal(_ fd: CInt) -> (signal: CInt, value: Int32)? {
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        let count = withUnsafeMutableBytes(of: &info) { Glibc.read(fd, $0.baseAddress, size) }
        return count == size ? (CInt(info.ssi_signo), info.ssi_int) : nil
    }

    /// pthread_sigmask(3) SIG_BLOCK: these signals reach the process only through a signalfd. Threads created
    /// afterwards inherit the mask.
    static func blockSignals(_ signals: [CInt]) {
        var set = signalSet(signals)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// sigaction(2) SIG_IGN. A write to a socket whose peer is gone must not kill the process: send uses
    /// MSG_NOSIGNAL, but splice(2) to a socket has no such flag.
    static func ignoreSignal(_ signal: CInt) {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = SIG_IGN
        sigemptyset(&action.sa_mask)
        sigaction(signal, &action, nil)
    }

    private static func signalSet(_ signals: [CInt]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return set
    }

    // MARK: poll

    /// poll(2) over `descriptors`, filling in their `revents`; returns how many have events, 0 on timeout or EINTR.
    @discardableResult
    static func poll(_ descriptors: inout [pollfd], timeout: CInt) -> Int {
        let count = descriptors.withUnsafeMutableBufferPointer { buffer in
            Glibc.poll(buffer.baseAddress, nfds_t(buffer.count), timeout)
        }
        return max(0, Int(count))
    }

    // MARK: time

    /// clock_gettime(2) CLOCK_MONOTONIC in milliseconds.
    @inline(__always)
    static func monotonicMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }

    /// clock_gettime(2) CLOCK_REALTIME: seconds since the epoch.
    static func wallClockSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// nanosleep(2).
    static func sleep(milliseconds: Int64) {
        var duration = timespec(tv_sec: Int(milliseconds / 1000), tv_nsec: Int(milliseconds % 1000) * 1_000_000)
        var remaining = timespec()
        while nanosleep(&duration, &remaining) == -1 && errno == EINTR { duration = remaining }
    }

    // MARK: processes

    /// getpid(2).
    static var processID: CInt { getpid() }

    /// fork(2): 0 in the child, the child's pid in the parent.
    static func fork() throws(Errno) -> CInt {
        try valueOrErrno { Glibc.fork() }
    }

    /// setsid(2).
    static func newSession() throws(Errno) {
        _ = try valueOrErrno { Glibc.setsid() }
    }

    /// _exit(2): ends the process without running atexit handlers or flushing stdio.
    static func exitImmediately(_ status: CInt) -> Never {
        Glibc._exit(status)
    }

    /// sysconf(3) _SC_NPROCESSORS_ONLN.
    static var onlineProcessors: Int { max(1, Int(sysconf(CInt(_SC_NPROCESSORS_ONLN)))) }

    /// getenv(3).
    static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }

    /// unsetenv(3).
    static func removeEnvironment(_ name: String) {
        unsetenv(name)
    }

    // MARK: threads

    /// pthread_create(3) running `body`.
    static func startThread(_ body: @escaping () -> Void) throws(Errno) -> pthread_t {
        final class Box {
            let body: () -> Void
            init(_ body: @escaping () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(
            &thread, nil,
            { raw in
                Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
                return nil
            }, box)
        guard status == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw Errno(status)
        }
        return thread
    }

    /// pthread_join(3).
    static func joinThread(_ thread: pthread_t) {
        pthread_join(thread, nil)
    }

    // MARK: limits

    /// getrlimit(2) RLIMIT_NOFILE: (soft, hard).
    static func descriptorLimit() -> (soft: UInt64, hard: UInt64) {
        var limit = rlimit()
        getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }

    /// setrlimit(2) RLIMIT_NOFILE soft limit.
    static func setDescriptorLimit(soft: UInt64) throws(Errno) {
        var limit = rlimit()
        getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = rlim_t(soft)
        _ = try valueOrErrno { setrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit) }
    }

    // MARK: the process's figures

    /// opendir(3) and readdir(3): the entries of a directory other than `.` and `..`; nil when it cannot be read.
    static func directoryEntryCount(_ path: String) -> Int? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let name = entry.pointee.d_name
            let isDot = withUnsafeBytes(of: name) { raw in
                raw[0] == 0x2e && (raw[1] == 0 || (raw[1] == 0x2e && raw[2] == 0))
            }
            if !isDot { count += 1 }
        }
        return count
    }

    /// open(2) and read(2) of a small file whole (up to `limit` bytes), such as one in /proc; nil when it cannot
    /// be read.
    static func readSmallFile(_ path: String, limit: Int = 4096) -> [UInt8]? {
        guard let fd = try? open(path, O_RDONLY) else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: limit)
        var length = 0
        while length < limit {
            let result = bytes.withUnsafeMutableBytes { all in
                Result { () throws(Errno) in
                    try valueOrErrno { Glibc.read(fd, all.baseAddress! + length, limit - length) }
                }
            }
            guard case .success(let count) = result else { return nil }
            if count == 0 { break }
            length += count
        }
        bytes.removeLast(limit - length)
        return bytes
    }

    /// sysconf(3) _SC_CLK_TCK: the unit of the CPU times in /proc.
    static var clockTicksPerSecond: Int { max(1, Int(sysconf(CInt(_SC_CLK_TCK)))) }

    /// sysconf(3) _SC_PAGESIZE.
    static var pageSize: Int { max(1, Int(sysconf(CInt(_SC_PAGESIZE)))) }

    // MARK: users and privileges

    /// getpwnam_r(3): the uid, primary gid and name of a user, by name or number.
    static func user(_ name: String) -> (uid: uid_t, gid: gid_t, name: String)? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        if getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil {
            return (entry.pw_uid, entry.pw_gid, String(cString: entry.pw_name))
        }
        if let number = UInt32(name), getpwuid_r(number, &entry, &buffer, buffer.count, &result) == 0, result != nil {
            return (entry.pw_uid, entry.pw_gid, String(cString: entry.pw_name))
        }
        return nil
    }

    /// getgrnam_r(3): the gid of a group, by name or number.
    static func group(_ name: String) -> gid_t? {
        var entry = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        if getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil { return entry.gr_gid }
        if let number = UInt32(name), getgrgid_r(number, &entry, &buffer, buffer.count, &result) == 0, result != nil {
            return entry.gr_gid
        }
        return nil
    }

    /// initgroups(3): the supplementary groups of `user`, plus `gid`.
    static func initializeGroups(user: String, gid: gid_t) throws(Errno) {
        _ = try valueOrErrno { initgroups(user, gid) }
    }

    /// setgroups(2) to exactly `groups`.
    static func setGroups(_ groups: [gid_t]) throws(Errno) {
        _ = try valueOrErrno { setgroups(groups.count, groups) }
    }

    /// setgid(2).
    static func setGroupID(_ gid: gid_t) throws(Errno) {
        _ = try valueOrErrno { setgid(gid) }
    }

    /// setuid(2).
    static func setUserID(_ uid: uid_t) throws(Errno) {
        _ = try valueOrErrno { setuid(uid) }
    }

    /// getuid(2), geteuid(2), getgid(2), getegid(2).
    static var identities: (uid: uid_t, euid: uid_t, gid: gid_t, egid: gid_t) {
        (getuid(), geteuid(), getgid(), getegid())
    }

    /// Waits for a child process and for `signals` (which must be blocked), forwarding those to the child,
    /// until the child exits; returns its exit status (128 + signal when killed).
    static func superviseChild(_ child: pid_t, forwarding signals: [CInt]) -> CInt {
        var set = signalSet(signals + [SIGCHLD])
        pthread_sigmask(SIG_BLOCK, &set, nil)
        while true {
            var raw: CInt = 0
            if waitpid(child, &raw, WNOHANG) == child {
                return raw & 0x7f == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
            }
            var info = siginfo_t()
            let signal = sigwaitinfo(&set, &info)
            // Only signals another process sent (si_code <= 0, as kill(2) gives) are passed on: a terminal's
            // Ctrl-C reaches the whole process group, the child included, already.
            if signal > 0 && signal != SIGCHLD && info.si_code <= 0 { kill(child, signal) }
        }
    }

    // MARK: logging

    /// openlog(3) with LOG_PID | LOG_NDELAY. The identifier must outlive the process's use of syslog, so it is
    /// copied once into memory that is never freed.
    static func openSystemLog(identifier: String, facility: CInt) {
        let copy = strdup(identifier)
        openlog(copy, LOG_PID | LOG_NDELAY, facility)
    }

    /// syslog(3) of one message.
    static func systemLog(_ priority: CInt, _ message: String) {
        tcx_syslog(priority, message)
    }
}

/// A host name that getaddrinfo(3) could not resolve.
public struct ResolutionError: Error, Equatable, Sendable, CustomStringConvertible {
    public let host: String
    public let reason: String

    public var description: String { "cannot resolve \(host): \(reason)" }
}
