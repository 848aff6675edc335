import CLinux
import Glibc

// The one place where tcp-crossover calls libc. Every function makes one call, retries it on EINTR where that is
// safe, and turns -1/errno into a thrown `Errno` or, for non-blocking calls, into `IOResult.wouldBlock`.
// `Syscall` is one namespace: this file holds the descriptors; each Syscalls+Subject.swift beside it extends it
// with the calls of one subject (sockets, pipes, events, processes, users, time, files, addresses, log).

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
}
