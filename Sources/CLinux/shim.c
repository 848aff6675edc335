#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include "CLinux.h"

const unsigned int tcx_splice_flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
const int tcx_sock_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
const int tcx_ip_bind_address_no_port = IP_BIND_ADDRESS_NO_PORT;

int tcx_accept(int fd, struct sockaddr *address, socklen_t *length) {
    return accept4(fd, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int tcx_pipe(int fds[2], int nonblocking) {
    return pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0));
}

int tcx_set_pipe_size(int fd, int size) {
    return fcntl(fd, F_SETPIPE_SZ, size);
}

int tcx_get_pipe_size(int fd) {
    return fcntl(fd, F_GETPIPE_SZ);
}

int tcx_unacknowledged(int fd, int *count) {
    return ioctl(fd, SIOCOUTQ, count);
}

int tcx_advertised_segment(int fd) {
    struct tcp_info info;
    socklen_t length = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0 || length < sizeof info) return -1;
    return (int)info.tcpi_advmss;
}

int tcx_lock(int fd) {
    return flock(fd, LOCK_EX | LOCK_NB);
}

void tcx_syslog_bytes(int priority, const char *message, size_t length) {
    syslog(priority, "%.*s", (int)length, message);
}
