// Linux interfaces that Swift's Glibc module leaves out. Headers that are plain POSIX or Linux (epoll, eventfd,
// signalfd) are included here so Swift sees their types and constants; the GNU-only calls are wrapped in shim.c,
// which is compiled with _GNU_SOURCE.
#ifndef TCX_CLINUX_H
#define TCX_CLINUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <signal.h>
#include <syslog.h>

/// The relay's receives, sends and splices, as plain system calls (syscall(2)). glibc's recv, send and splice are
/// thread-cancellation points: in a process with more than one thread (the relay has its event loops and a log
/// writer) each call turns asynchronous cancellation on before the system call and off after it: some 32
/// instructions of the 60 to 95 that a relayed send or receive took in user space (callgrind,
/// `make benchmark-instructions`). The relay never cancels a thread. The system calls are the same (glibc's recv and
/// send are recvfrom and sendto), so a unit's SystemCallFilter sees nothing new. syscall(2) takes its arguments as
/// variadic ones: each is passed at the width of a long, as the kernel reads it.
static inline ssize_t tcx_recv(int fd, void *buffer, size_t length) {
    return syscall(SYS_recvfrom, (long)fd, buffer, length, 0L, NULL, NULL);
}

static inline ssize_t tcx_send(int fd, const void *buffer, size_t length, int flags) {
    return syscall(SYS_sendto, (long)fd, buffer, length, (long)flags, NULL, 0L);
}

/// splice(2) between a descriptor and a pipe, without offsets.
static inline ssize_t tcx_splice(int fd_in, int fd_out, size_t length, unsigned int flags) {
    return syscall(SYS_splice, (long)fd_in, NULL, (long)fd_out, NULL, length, (long)flags);
}

/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC.
int tcx_accept(int fd, struct sockaddr *address, socklen_t *length);

/// pipe2(2) with O_CLOEXEC, and O_NONBLOCK when `nonblocking` is not 0.
int tcx_pipe(int fds[2], int nonblocking);

/// fcntl(2) F_SETPIPE_SZ; returns the new capacity or -1.
int tcx_set_pipe_size(int fd, int size);

/// fcntl(2) F_GETPIPE_SZ.
int tcx_get_pipe_size(int fd);

/// ioctl(2) SIOCOUTQ on a TCP socket: bytes sent and not yet acknowledged by the peer (a FIN counts as one).
int tcx_unacknowledged(int fd, int *count);

/// getsockopt(2) TCP_INFO: the largest segment this socket announced to its peer (tcpi_advmss), or -1.
int tcx_advertised_segment(int fd);

/// flock(2) LOCK_EX | LOCK_NB.
int tcx_lock(int fd);

/// syslog(3) of `length` bytes that need no terminating NUL (a line inside a buffer of lines).
void tcx_syslog_bytes(int priority, const char *message, size_t length);

/// Loads libsystemd.so.0 (once); NULL on success, otherwise why it could not be loaded.
const char *tcx_systemd_load(void);

/// sd_listen_fds_with_names(3), sd_notify(3), sd_watchdog_enabled(3) from the loaded libsystemd; -ENOSYS when it
/// cannot be loaded.
int tcx_sd_listen_fds_with_names(int unset_environment, char ***names);
int tcx_sd_notify(int unset_environment, const char *state);
int tcx_sd_watchdog_enabled(int unset_environment, uint64_t *usec);
/// sd_pid_notify_with_fds(0, 0, state, fds, n_fds): a notification that passes descriptors (FDSTORE=1).
int tcx_sd_notify_with_fds(const char *state, const int *fds, unsigned n_fds);

/// SPLICE_F_MOVE | SPLICE_F_NONBLOCK.
extern const unsigned int tcx_splice_flags;

/// IP_BIND_ADDRESS_NO_PORT (linux/in.h), for setsockopt(2) at level IPPROTO_IP.
extern const int tcx_ip_bind_address_no_port;

/// SOCK_NONBLOCK | SOCK_CLOEXEC, for socket(2).
extern const int tcx_sock_flags;

/// A counter that one thread (an event loop) adds to while others (the metrics thread, SIGUSR1's line) read it: a
/// relaxed atomic load and store, which compile to plain moves, so that counting costs the loop no more than a plain
/// add (no locked instruction, as only its own thread writes) and a reader never sees a torn value.
static inline void tcx_counter_add(uint64_t *counter, uint64_t amount) {
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + amount, __ATOMIC_RELAXED);
}

/// Reads a counter that `tcx_counter_add` updates in another thread.
static inline uint64_t tcx_counter_load(const uint64_t *counter) {
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

#endif
