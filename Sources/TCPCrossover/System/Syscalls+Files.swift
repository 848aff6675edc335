import CLinux
import Glibc

/// Files: the pidfile's lock and contents, and paths.
extension Syscall {
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
}
