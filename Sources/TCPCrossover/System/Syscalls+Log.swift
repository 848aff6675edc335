import CLinux
import Glibc

/// syslog(3).
extension Syscall {
    // MARK: logging

    /// openlog(3) with LOG_PID | LOG_NDELAY. The identifier must outlive the process's use of syslog, so it is
    /// copied once into memory that is never freed.
    static func openSystemLog(identifier: String, facility: CInt) {
        let copy = strdup(identifier)
        openlog(copy, LOG_PID | LOG_NDELAY, facility)
    }

    // MARK: log output

    /// write(2) of all of `bytes` to a blocking descriptor.
    static func writeAll(_ fd: CInt, _ bytes: UnsafeRawBufferPointer) throws(Errno) {
        var offset = 0
        while offset < bytes.count {
            guard case .processed(let count) = try write(fd, UnsafeRawBufferPointer(rebasing: bytes[offset...])) else {
                throw Errno.wouldBlock
            }
            offset += count
        }
    }

    /// syslog(3) of one message: `length` bytes at `message`, which need no terminating NUL.
    static func systemLog(_ priority: CInt, _ message: UnsafeRawBufferPointer) {
        tcx_syslog_bytes(priority, message.baseAddress?.assumingMemoryBound(to: CChar.self), message.count)
    }
}
