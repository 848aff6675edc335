/*
 * The floor of the HTTP metrics: the least work a relay built on epoll, recv(2) and send(2) can do per request, to
 * tell what tcp-crossover's own code costs from what any relay through sockets costs on the machine.
 *
 * One thread per CPU (or as many as given), each with its own SO_REUSEPORT listener on [::1]:PORT and its own
 * epoll. An accepted connection is connected to 127.0.0.1:BACKEND at once (a blocking connect: loopback answers
 * within the call); then a readable socket is read (MSG_DONTWAIT) into a 16 KiB buffer, and what was read is sent
 * whole to the other socket (a blocking send). The first end of stream or error on either side closes both.
 *
 * Not a relay to use: no half-close, no urgent data, no limits, timeouts or logs, and a slow reader stalls its
 * thread. Benchmarks/run builds it with the system's C compiler and runs it in the close and keepalive metrics only.
 *
 * Usage: floor-relay LISTEN-PORT BACKEND-PORT THREADS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MAX_FDS = 1 << 16, BUFFER = 16384 };

static int listen_port, backend_port;
/* The other socket of each connection, by descriptor, and the number of the connection that holds the descriptor
 * (0: none). A descriptor belongs to one thread until it is closed; an event carries the connection's number, so
 * that an event for a connection that ended earlier in the same batch, whose descriptor another thread may have
 * reused meanwhile, is dropped. */
static int peer[MAX_FDS];
static uint32_t holder[MAX_FDS];
static uint32_t connections;

static void fail(const char *what) {
    perror(what);
    exit(1);
}

static void end(int fd) {
    int other = peer[fd];
    __atomic_store_n(&holder[fd], 0, __ATOMIC_RELEASE);
    __atomic_store_n(&holder[other], 0, __ATOMIC_RELEASE);
    close(fd);
    close(other);
}

/* Accepts everything waiting and connects each to the backend. */
static void accept_all(int listener, int epoll) {
    const int one = 1;
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (client < 0) return;
        int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in backend = {
            .sin_family = AF_INET, .sin_port = htons(backend_port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (server < 0 || server >= MAX_FDS || client >= MAX_FDS
            || connect(server, (struct sockaddr *)&backend, sizeof backend) != 0) {
            close(client);
            if (server >= 0) close(server);
            continue;
        }
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        uint32_t number = __atomic_add_fetch(&connections, 1, __ATOMIC_RELAXED);
        if (number == 0) number = __atomic_add_fetch(&connections, 1, __ATOMIC_RELAXED);
        peer[client] = server;
        peer[server] = client;
        __atomic_store_n(&holder[client], number, __ATOMIC_RELEASE);
        __atomic_store_n(&holder[server], number, __ATOMIC_RELEASE);
        struct epoll_event event = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET};
        event.data.u64 = (uint64_t)number << 32 | (uint32_t)client;
        epoll_ctl(epoll, EPOLL_CTL_ADD, client, &event);
        event.data.u64 = (uint64_t)number << 32 | (uint32_t)server;
        epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event);
    }
}

/* Moves what `fd` has to its peer. A short read means the socket is empty (the next arrival is a new edge), unless
 * the peer also ended its side: then it is read to the end of stream. */
static void forward(int fd, uint32_t events, char *buffer) {
    for (;;) {
        ssize_t received = recv(fd, buffer, BUFFER, MSG_DONTWAIT);
        if (received < 0 && errno == EINTR) continue;
        if (received <= 0) {
            if (received == 0 || errno != EAGAIN) end(fd);
            return;
        }
        for (ssize_t sent = 0; sent < received;) {
            ssize_t count = send(peer[fd], buffer + sent, (size_t)(received - sent), MSG_NOSIGNAL);
            if (count < 0 && errno == EINTR) continue;
            if (count < 0) {
                end(fd);
                return;
            }
            sent += count;
        }
        if (received < BUFFER && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
    }
}

static void *run(void *unused) {
    (void)unused;
    const int one = 1;
    int listener = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0) fail("socket");
    setsockopt(listener, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in6 address = {
        .sin6_family = AF_INET6, .sin6_port = htons(listen_port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0) fail("bind");
    if (listen(listener, 4096) != 0) fail("listen");
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    if (epoll < 0) fail("epoll_create1");
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = (uint32_t)listener};
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    static __thread char buffer[BUFFER];
    struct epoll_event events[64];
    for (;;) {
        int count = epoll_wait(epoll, events, 64, -1);
        for (int index = 0; index < count; index++) {
            int fd = (int)(uint32_t)events[index].data.u64;
            uint32_t number = (uint32_t)(events[index].data.u64 >> 32);
            if (number == 0) {
                accept_all(listener, epoll);
            } else if (__atomic_load_n(&holder[fd], __ATOMIC_ACQUIRE) == number) {
                forward(fd, events[index].events, buffer);
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: floor-relay LISTEN-PORT BACKEND-PORT THREADS\n");
        return 64;
    }
    listen_port = atoi(argv[1]);
    backend_port = atoi(argv[2]);
    int threads = atoi(argv[3]);
    for (int thread = 1; thread < threads; thread++) {
        pthread_t id;
        if (pthread_create(&id, NULL, run, NULL) != 0) fail("pthread_create");
    }
    run(NULL);
    return 0;
}
