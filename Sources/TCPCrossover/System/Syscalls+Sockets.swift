import CLinux
import Glibc

/// Sockets: creating, options, binding, listening, accepting, connecting, and moving bytes.
extension Syscall {
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

    /// setsockopt(2) TCP_MAXSEG before connect(2): the largest segment the peer may send, announced in the SYN (the
    /// kernel takes the smaller of it and the route's). Errors are ignored: the socket keeps the interface's.
    static func limitSegmentSize(_ fd: CInt, _ bytes: Int) {
        var value = CInt(clamping: bytes)
        _ = Glibc.setsockopt(fd, CInt(IPPROTO_TCP), TCP_MAXSEG, &value, socklen_t(MemoryLayout<CInt>.size))
    }

    /// getsockopt(2) TCP_INFO: the largest segment the socket announced to its peer when connecting, that is the
    /// largest the peer may send (the interface's, or less after `limitSegmentSize`); nil when it cannot be read.
    static func advertisedSegmentSize(_ fd: CInt) -> Int? {
        let bytes = tcx_advertised_segment(fd)
        return bytes > 0 ? Int(bytes) : nil
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

    /// recv(2), non-blocking (not a cancellation point: see `tcx_recv`).
    @inline(__always)
    static func receive(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> IOResult<Int> {
        try nonBlocking { tcx_recv(fd, buffer.baseAddress, buffer.count) }
    }

    /// send(2) with MSG_NOSIGNAL, non-blocking; with `more`, MSG_MORE too: TCP holds the bytes back for what
    /// follows (the FIN of a shutdown(2) goes out in the same segment).
    @inline(__always)
    static func send(_ fd: CInt, _ buffer: UnsafeRawBufferPointer, more: Bool) throws(Errno) -> IOResult<Int> {
        let flags = more ? CInt(MSG_NOSIGNAL) | CInt(MSG_MORE) : CInt(MSG_NOSIGNAL)
        return try nonBlocking { tcx_send(fd, buffer.baseAddress, buffer.count, flags) }
    }

    /// send(2) of one byte with MSG_OOB and MSG_NOSIGNAL, non-blocking: TCP sends it as urgent data.
    static func sendUrgent(_ fd: CInt, _ byte: UInt8) throws(Errno) -> IOResult<Int> {
        var byte = byte
        return try nonBlocking { tcx_send(fd, &byte, 1, CInt(MSG_NOSIGNAL) | CInt(MSG_OOB)) }
    }

    /// sockatmark(3): whether the next byte to receive is the urgent byte (the socket reads it in line).
    static func atUrgentMark(_ fd: CInt) throws(Errno) -> Bool {
        try valueOrErrno { Glibc.sockatmark(fd) } == 1
    }

    /// shutdown(2) SHUT_WR: sends a FIN, keeps reading.
    static func shutdownWrite(_ fd: CInt) throws(Errno) {
        _ = try valueOrErrno { Glibc.shutdown(fd, CInt(SHUT_WR)) }
    }
}

extension Syscall {
    /// The machine's TCP memory (see `TCPMemory`): /proc/self/net/sockstat (readable in a service with
    /// `ProcSubset=pid`), against /proc/sys/net/ipv4/tcp_mem, or the kernel's default for it from sysconf(3)'s
    /// physical pages where /proc/sys is hidden; nil when sockstat cannot be read.
    static func tcpMemory() -> TCPMemory? {
        guard let sockstat = readSmallFile("/proc/self/net/sockstat"),
            let allocated = TCPMemory.allocatedPages(sockstat: sockstat)
        else { return nil }
        let pressure =
            readSmallFile("/proc/sys/net/ipv4/tcp_mem").flatMap(TCPMemory.pressurePages(tcpMem:))
            ?? TCPMemory.defaultPressurePages(memoryPages: sysconf(CInt(_SC_PHYS_PAGES)))
        return TCPMemory(allocatedPages: allocated, pressurePages: pressure)
    }
}
