import Glibc

/// The process: forking, the environment, threads, limits, figures from /proc, and supervising a child.
extension Syscall {
    // MARK: processes

    /// getpid(2).
    static var processID: CInt { getpid() }

    /// fork(2): 0 in the child, the child's pid in the parent. The child is marked `isForkedChild`.
    static func fork() throws(Errno) -> CInt {
        let pid = try valueOrErrno { Glibc.fork() }
        if pid == 0 { isForkedChild = true }
        return pid
    }

    /// This process is the child of a fork(2) (the background relay, the relay under a pidfile keeper). Its main
    /// thread must then take no lock of Swift's runtime or of Synchronization's `Mutex` while other threads may
    /// contend for it: those locks are priority-inheriting futexes that hold the owner's thread ID, which Swift
    /// caches per thread, and the main thread's cache still holds the parent's ID, so a contending thread's
    /// FUTEX_LOCK_PI names a thread that does not exist (seen: a trap in `Mutex._lockSlow`, and two loops spinning
    /// for good in swift_once). Set in the child before any thread starts; read-only afterwards.
    nonisolated(unsafe) static var isForkedChild = false

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

    // MARK: supervision

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
}
