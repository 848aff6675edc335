/// What an inherited descriptor is, as fstat(2) and getsockopt(2) tell.
public enum DescriptorKind: Equatable, Sendable {
    public enum Family: Sendable {
        case ipv4, ipv6, unix, other
    }

    case closed
    case notSocket
    case socket(family: Family, stream: Bool, listening: Bool)
}

/// A descriptor the process was started with: systemd's (from 3 on, with FileDescriptorName=) or inetd's standard
/// input.
public struct InheritedDescriptor: Equatable, Sendable {
    public var fd: CInt
    public var name: String?
    public var kind: DescriptorKind

    public init(fd: CInt, name: String? = nil, kind: DescriptorKind) {
        self.fd = fd
        self.name = name
        self.kind = kind
    }

    /// `descriptor 3 ("smtp")`, for messages.
    var label: String {
        name.map { "descriptor \(fd) (\"\($0)\")" } ?? "descriptor \(fd)"
    }
}

/// How the process was started, found at start without any flag.
public enum StartMode: Equatable, Sendable {
    /// systemd socket activation, `Accept=no`: listening sockets, each served by the accept loop.
    case systemdListeners([InheritedDescriptor])
    /// systemd socket activation, `Accept=yes`: one accepted connection, relayed until it ends.
    case systemdConnection(InheritedDescriptor)
    /// inetd `nowait` or xinetd `wait = no`: the accepted connection on standard input.
    case inetdConnection
    /// xinetd `wait = yes`: a listening socket on standard input.
    case inetdListener
    /// `--local`: the process binds and listens itself.
    case standalone

    /// Decides the mode from what the process inherited. `systemd` holds the descriptors passed through
    /// LISTEN_FDS (empty when none were), `standardInput` what descriptor 0 is. A combination that cannot work
    /// is a usage error, with a message that says why and what to do.
    public static func decide(
        systemd: [InheritedDescriptor],
        standardInput: DescriptorKind,
        hasLocal: Bool
    ) -> Result<StartMode, StartupError> {
        func usage(_ message: String) -> Result<StartMode, StartupError> {
            .failure(StartupError(ExitStatus.usage, message))
        }
        if !systemd.isEmpty {
            if hasLocal {
                return usage(
                    "--local cannot be used with the \(systemd.count) socket(s) systemd passed (LISTEN_FDS); "
                        + "the socket unit's ListenStream= says where to listen")
            }
            for descriptor in systemd {
                switch descriptor.kind {
                case .closed, .notSocket:
                    return usage("\(descriptor.label) passed by systemd is not a socket")
                case .socket(let family, let stream, _):
                    if !stream {
                        return usage(
                            "\(descriptor.label) passed by systemd is not a stream socket; "
                                + "tcp-crossover relays TCP (use ListenStream=)")
                    }
                    if family != .ipv4 && family != .ipv6 {
                        return usage("\(descriptor.label) passed by systemd is not a TCP socket (IPv4 or IPv6)")
                    }
                }
            }
            let connected = systemd.filter {
                if case .socket(_, _, let listening) = $0.kind { return !listening }
                return false
            }
            if connected.isEmpty { return .success(.systemdListeners(systemd)) }
            if systemd.count == 1 { return .success(.systemdConnection(connected[0])) }
            return usage(
                "systemd passed \(systemd.count) sockets of which \(connected.count) are connections; "
                    + "Accept=yes passes exactly one connection")
        }
        if case .socket(let family, let stream, let listening) = standardInput, family == .ipv4 || family == .ipv6 {
            if hasLocal {
                return usage("--local cannot be used when standard input is a socket (started by inetd or xinetd)")
            }
            if !stream {
                return usage(
                    "standard input is a datagram socket; tcp-crossover relays TCP (inetd: socket_type = stream)")
            }
            return .success(listening ? .inetdListener : .inetdConnection)
        }
        if hasLocal { return .success(.standalone) }
        return usage(
            "nothing to listen on: give --local ADDRESS:PORT to listen yourself, or start tcp-crossover from a "
                + "systemd socket unit or from inetd/xinetd, which pass the sockets")
    }
}
