/// The exit statuses of tcp-crossover, from sysexits.h where one fits. docs/OPERATIONS.md lists them.
public enum ExitStatus {
    public static let success: CInt = 0
    /// A runtime failure that fits no other status, such as epoll or a thread that could not be created.
    public static let failure: CInt = 1
    /// EX_USAGE: bad command line or a start-up mode that does not fit the options.
    public static let usage: CInt = 64
    /// EX_NOUSER: the `--user` or `--group` does not exist.
    public static let noUser: CInt = 67
    /// EX_NOHOST: a host name that does not resolve.
    public static let noHost: CInt = 68
    /// EX_UNAVAILABLE: a listening address that cannot be bound (in use, not permitted, not on this host).
    public static let unavailable: CInt = 69
    /// EX_OSERR: a system call failed at start (socket, fork, setuid...).
    public static let systemError: CInt = 71
    /// EX_CANTCREAT: the pidfile cannot be created or written.
    public static let cannotCreate: CInt = 73
    /// EX_TEMPFAIL: another instance holds the pidfile.
    public static let alreadyRunning: CInt = 75
}

/// A failure before the relay runs: one line for the user, and the exit status.
public struct StartupError: Error, CustomStringConvertible, Sendable, Equatable {
    public let status: CInt
    public let message: String

    public init(_ status: CInt, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }
}
