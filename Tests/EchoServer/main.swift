// tcx-test-echo: an echo server for the reliability tests, in a process of its own so that the descriptors of
// ten thousand connections count against its limit, not the test's. One thread, poll(2), non-blocking sockets.
// Listens on the IPv4 address given as its argument, 127.0.0.1 without one; prints `listening on ADDRESS:PORT` once
// ready; runs until killed.

import Glibc

let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
var one: Int32 = 1
setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
var address = sockaddr_in()
address.sin_family = sa_family_t(AF_INET)
let host = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "127.0.0.1"
guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
    let message = Array("not an IPv4 address: \(host)\n".utf8)
    _ = message.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(64)
}
let bound = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
    }
}
guard bound == 0, listen(listener, 4096) == 0 else {
    perror("bind/listen")
    exit(1)
}
_ = fcntl(listener, F_SETFL, O_NONBLOCK)
var length = socklen_t(MemoryLayout<sockaddr_in>.size)
_ = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
}
let line = Array("listening on \(host):\(UInt16(bigEndian: address.sin_port))\n".utf8)
_ = line.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }

var polls = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
var buffer = [UInt8](repeating: 0, count: 65536)
while true {
    guard poll(&polls, nfds_t(polls.count), -1) > 0 else { continue }
    var closed: [Int] = []
    for index in polls.indices where polls[index].revents != 0 {
        let fd = polls[index].fd
        if index == 0 {
            while case let client = accept(listener, nil, nil), client >= 0 {
                _ = fcntl(client, F_SETFL, O_NONBLOCK)
                polls.append(pollfd(fd: client, events: Int16(POLLIN), revents: 0))
            }
            continue
        }
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count > 0 {
            var offset = 0
            while offset < count {
                let written = buffer.withUnsafeBytes {
                    send(fd, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL))
                }
                if written > 0 {
                    offset += written
                } else if errno == EAGAIN {
                    var wait = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&wait, 1, 100)
                } else {
                    break
                }
            }
        } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
            close(fd)
            closed.append(index)
        }
    }
    for index in closed.reversed() { polls.remove(at: index) }
    for index in polls.indices { polls[index].revents = 0 }
}
