import Glibc

/// Opening the listening sockets of standalone mode.
public enum Listener {
    /// A socket listening on `address`: SO_REUSEADDR, IPV6_V6ONLY for an IPv6 address unless `dualStack`, a
    /// backlog of SOMAXCONN, and the options every accepted connection inherits (TCP_NODELAY, keepalive, and on a
    /// loopback address `loopbackCongestionControl`), for the connections of `service`. The listening socket has
    /// the address it is bound to (with the port the kernel picked for port 0).
    public static func open(
        _ address: SocketAddress, dualStack: Bool, keepalive: Keepalive?,
        loopbackCongestionControl: CongestionControl?, service: Int, name: String?
    ) throws(StartupError) -> ListeningSocket {
        let fd: CInt
        do {
            fd = try Syscall.streamSocket(family: address.addressFamily)
        } catch {
            throw StartupError(ExitStatus.systemError, "\(SystemError("socket for", address.description, error))")
        }
        do throws(SystemError) {
            try option(fd, SOL_SOCKET, SO_REUSEADDR, 1, address)
            if address.family == .ipv6 {
                // IPv6-only unless asked: `[::]:25` must bind while an IPv4-only daemon holds 0.0.0.0:25, which is
                // what this relay is for. Set explicitly, whatever /proc/sys/net/ipv6/bindv6only says.
                try option(fd, CInt(IPPROTO_IPV6), IPV6_V6ONLY, dualStack ? 0 : 1, address)
            }
            do {
                try Syscall.setConnectionOptions(fd, keepalive: keepalive)
            } catch {
                throw SystemError("setsockopt on", address.description, error)
            }
            var passesLoopbackCongestionControl = false
            if address.isLoopback, let algorithm = loopbackCongestionControl {
                passesLoopbackCongestionControl = Syscall.useCongestionControl(fd, algorithm)
            }
            do {
                try Syscall.bind(fd, to: address)
            } catch {
                throw SystemError("bind to", address.description, error)
            }
            do {
                try Syscall.listen(fd, backlog: SOMAXCONN)
            } catch {
                throw SystemError("listen on", address.description, error)
            }
            let bound: SocketAddress
            do {
                bound = try Syscall.localAddress(fd)
            } catch {
                throw SystemError("getsockname on", address.description, error)
            }
            return ListeningSocket(
                fd: fd, address: bound, service: service, name: name,
                passesLoopbackCongestionControl: passesLoopbackCongestionControl)
        } catch {
            Syscall.close(fd)
            let status =
                switch error.errno {
                case .addressInUse, .permissionDenied, Errno(EADDRNOTAVAIL): ExitStatus.unavailable
                default: ExitStatus.systemError
                }
            throw StartupError(status, error.description)
        }
    }

    private static func option(_ fd: CInt, _ level: CInt, _ name: CInt, _ value: CInt, _ address: SocketAddress)
        throws(SystemError)
    {
        do {
            try Syscall.setOption(fd, level, name, value)
        } catch {
            throw SystemError("setsockopt on", address.description, error)
        }
    }
}
