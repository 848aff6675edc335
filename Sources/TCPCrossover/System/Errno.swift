import Glibc

/// An `errno` value from a failed system call.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: CInt

    public init(_ rawValue: CInt) {
        self.rawValue = rawValue
    }

    /// The value `errno` holds now.
    static var current: Errno { Errno(errno) }

    /// strerror(3) of the value, such as "Connection refused".
    public var description: String { Syscall.errorString(rawValue) }

    public static let wouldBlock = Errno(EAGAIN)
    public static let interrupted = Errno(EINTR)
    public static let inProgress = Errno(EINPROGRESS)
    public static let invalidArgument = Errno(EINVAL)
    public static let connectionRefused = Errno(ECONNREFUSED)
    public static let connectionReset = Errno(ECONNRESET)
    public static let brokenPipe = Errno(EPIPE)
    public static let timedOut = Errno(ETIMEDOUT)
    public static let tooManyOpenFiles = Errno(EMFILE)
    public static let addressInUse = Errno(EADDRINUSE)
    public static let permissionDenied = Errno(EACCES)
    public static let noSuchFile = Errno(ENOENT)
}

// The classes of errno that the relay acts on, decided here and nowhere else (as systemd's errno-util.h does).
extension Errno {
    /// The call would block or was interrupted: try again later.
    public var isTransient: Bool {
        rawValue == EAGAIN || rawValue == EWOULDBLOCK || rawValue == EINTR
    }

    /// The peer or the path to it went away: the connection is over, the process is fine.
    public var isDisconnect: Bool {
        switch rawValue {
        case ECONNABORTED, ECONNREFUSED, ECONNRESET, EHOSTDOWN, EHOSTUNREACH, ENETDOWN, ENETRESET, ENETUNREACH,
            ENONET, ENOPROTOOPT, ENOTCONN, EPIPE, EPROTO, ESHUTDOWN, ETIMEDOUT:
            return true
        default:
            return false
        }
    }

    /// An accept(2) failure after which accepting goes on at once: the connection that failed was the only one hurt.
    public var isAcceptAgain: Bool {
        isDisconnect || isTransient || rawValue == EOPNOTSUPP
    }

    /// A connect(2) failure that says something about this machine, not about the remote: no free local port
    /// (EADDRNOTAVAIL, EADDRINUSE), out of descriptors or memory, a local firewall or policy (EPERM, EACCES), a
    /// family this machine cannot use. It must not put a healthy backend in back-off.
    public var isLocalConnectFailure: Bool {
        switch rawValue {
        case EADDRNOTAVAIL, EADDRINUSE, EAGAIN, EPERM, EACCES, EAFNOSUPPORT, EINVAL: return true
        default: return isResourceExhaustion
        }
    }

    /// The process or the system is out of descriptors or memory: stop taking on work for a while.
    public var isResourceExhaustion: Bool {
        rawValue == EMFILE || rawValue == ENFILE || rawValue == ENOBUFS || rawValue == ENOMEM
    }
}

/// The result of a non-blocking call: bytes (or a descriptor) moved, or nothing to do until the next readiness event.
public enum IOResult<Value: Equatable>: Equatable {
    case processed(Value)
    case wouldBlock
}

/// A failed operation: what was attempted, on what, and the errno. Reads as one sentence, such as
/// "bind to [::]:25 failed: Permission denied".
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let subject: String
    public let errno: Errno

    public init(_ operation: String, _ subject: String, _ errno: Errno) {
        self.operation = operation
        self.subject = subject
        self.errno = errno
    }

    public init(_ operation: String, _ errno: Errno) {
        self.init(operation, "", errno)
    }

    public var description: String {
        subject.isEmpty ? "\(operation) failed: \(errno)" : "\(operation) \(subject) failed: \(errno)"
    }
}
