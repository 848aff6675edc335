import CLinux
import Glibc

/// Pipes for splice(2), their sizes and the per-user budget of pipe pages, and the socket buffers that the
/// relay sizes with them.
extension Syscall {
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

    /// fcntl(2) F_SETPIPE_SZ: the capacity the pipe has afterwards (a whole number of pages, at least `bytes`), or
    /// nil when the kernel refuses the size (above /proc/sys/fs/pipe-max-size, past the user's
    /// pipe-user-pages-soft, or smaller than the bytes the pipe holds): the pipe then keeps the size it had.
    static func setPipeCapacity(_ fd: CInt, _ bytes: Int) -> Int? {
        let capacity = tcx_set_pipe_size(fd, CInt(clamping: bytes))
        return capacity > 0 ? Int(capacity) : nil
    }

    /// fcntl(2) F_GETPIPE_SZ: the pipe's capacity in bytes.
    static func pipeCapacity(_ fd: CInt) -> Int {
        Int(tcx_get_pipe_size(fd))
    }

    /// The user's budget of pipe pages, /proc/sys/fs/pipe-user-pages-soft (0: no limit); nil where it cannot be
    /// read (a sandbox with ProcSubset=pid).
    static func pipeUserPagesSoft() -> Int? {
        guard let fd = try? open("/proc/sys/fs/pipe-user-pages-soft", O_RDONLY) else { return nil }
        defer { close(fd) }
        guard let bytes = try? readStart(fd, count: 32) else { return nil }
        var value = 0
        var digits = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { break }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
            digits += 1
        }
        return digits > 0 ? value : nil
    }

    /// Whether the process runs without root's privileges (its effective user is not 0), so that the kernel holds it
    /// to the per-user limits, such as fs.pipe-user-pages-soft.
    static var isUnprivileged: Bool { geteuid() != 0 }

    /// setsockopt(2) TCP_NOTSENT_LOWAT: the socket takes more only while fewer than `bytes` of what it was given wait
    /// unsent (what is in flight is bounded by the peer's window). Errors are ignored.
    static func setUnsentLimit(_ fd: CInt, _ bytes: Int) {
        var value = CInt(clamping: bytes)
        _ = Glibc.setsockopt(
            fd, CInt(IPPROTO_TCP), TCP_NOTSENT_LOWAT, &value, socklen_t(MemoryLayout<CInt>.size))
    }

    /// sysconf(3) _SC_PAGESIZE.
    static var pageSize: Int { max(4096, Int(sysconf(CInt(_SC_PAGESIZE)))) }

    /// setsockopt(2) SO_RCVBUF: the socket's receive buffer (the kernel doubles `bytes` for its bookkeeping and caps
    /// it at net.core.rmem_max), which also stops the kernel from growing it by itself (autotuning). Errors are
    /// ignored: the buffer then stays as it was.
    static func setReceiveBuffer(_ fd: CInt, _ bytes: Int) {
        var value = CInt(clamping: bytes)
        _ = Glibc.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, socklen_t(MemoryLayout<CInt>.size))
    }

    /// splice(2) of up to `count` bytes from `source` to `destination`, one of which is a pipe; non-blocking.
    @inline(__always)
    static func splice(from source: CInt, to destination: CInt, count: Int) throws(Errno) -> IOResult<Int> {
        try nonBlocking { tcx_splice(source, destination, count, tcx_splice_flags) }
    }
}
