import CLinux
import Glibc

/// What an event loop waits on: epoll, eventfd, signalfd and poll, and the process's signal dispositions.
extension Syscall {
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

    /// read(2) of one `signalfd_siginfo`: the number of a pending signal and the value sent with it (sigqueue(3)), or
    /// nil when none is.
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

    static func signalSet(_ signals: [CInt]) -> sigset_t {
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
}
