import Glibc

/// Clocks and sleeping.
extension Syscall {
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
}
