import Glibc

/// A mutex with a condition variable (pthread_mutex_t, pthread_cond_t on CLOCK_MONOTONIC), for a thread that
/// sleeps until another hands it work: the log writer. The event loops never wait on one.
final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Deadlines are monotonic: a clock step must not make a bounded wait unbounded.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` holding the mutex (pthread_mutex_lock(3)).
    @inline(__always)
    func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// pthread_cond_wait(3): releases the mutex until woken, then holds it again. Call inside `withLock`; wakes
    /// may be spurious, so the caller checks its condition in a loop.
    func wait() {
        pthread_cond_wait(condition, mutex)
    }

    /// pthread_cond_timedwait(3) until `deadline` (milliseconds of `Syscall.monotonicMilliseconds`); false once
    /// the deadline has passed. Call inside `withLock`.
    func wait(until deadline: Int64) -> Bool {
        guard deadline > Syscall.monotonicMilliseconds() else { return false }
        var time = timespec(tv_sec: Int(deadline / 1000), tv_nsec: Int(deadline % 1000) * 1_000_000)
        return pthread_cond_timedwait(condition, mutex, &time) != ETIMEDOUT
    }

    /// pthread_cond_broadcast(3): wakes every waiting thread. Call inside `withLock`.
    func broadcast() {
        pthread_cond_broadcast(condition)
    }
}
