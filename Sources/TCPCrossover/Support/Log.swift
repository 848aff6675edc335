import Glibc

/// Severity of a log line, with syslog(3)'s numbers (which the journal's `<N>` prefixes use too).
public enum LogLevel: Int32, Sendable, Comparable {
    case error = 3
    case warning = 4
    case notice = 5
    case info = 6
    case debug = 7

    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Where log lines go.
public enum LogTarget: Sendable, Equatable {
    /// Standard error, one plain line each: the foreground.
    case standardError
    /// Standard error with sd-daemon priority prefixes (`<6>…`), when it is connected to the journal.
    case journal
    /// syslog(3), facility daemon: in the background and under inetd, where standard error may be the client.
    case syslog
}

/// The process's log. It is set up once at start, before any thread runs, and only read afterwards.
public enum Log {
    nonisolated(unsafe) private static var target: LogTarget = .standardError
    nonisolated(unsafe) private static var threshold: LogLevel = .info

    public static let identifier = "tcp-crossover"

    /// Sets where lines go and the most detailed level written.
    public static func configure(target: LogTarget, level: LogLevel) {
        if target == .syslog { Syscall.openSystemLog(identifier: identifier, facility: LOG_DAEMON) }
        Self.target = target
        Self.threshold = level
    }

    public static var currentTarget: LogTarget { target }

    /// Whether lines of `level` are written: lets a caller skip building a debug message.
    @inline(__always)
    public static func enabled(_ level: LogLevel) -> Bool { level <= threshold }

    /// Writes `tcp-crossover: line` to standard error, whatever the log target: for the command's own messages
    /// (a bad option, a failure at start) before the relay runs.
    public static func console(_ line: String) {
        var text = "\(identifier): \(printable(line))\n"
        try? Syscall.writeAll(STDERR_FILENO, &text)
    }

    public static func error(_ message: @autoclosure () -> String) { write(.error, message) }
    public static func warning(_ message: @autoclosure () -> String) { write(.warning, message) }
    public static func notice(_ message: @autoclosure () -> String) { write(.notice, message) }
    public static func info(_ message: @autoclosure () -> String) { write(.info, message) }
    public static func debug(_ message: @autoclosure () -> String) { write(.debug, message) }

    private static func write(_ level: LogLevel, _ message: () -> String) {
        guard enabled(level) else { return }
        var text = printable(message())
        switch target {
        case .standardError:
            text.append("\n")
            try? Syscall.writeAll(STDERR_FILENO, &text)
        case .journal:
            var line = "<\(level.rawValue)>\(text)\n"
            try? Syscall.writeAll(STDERR_FILENO, &line)
        case .syslog:
            Syscall.systemLog(LOG_DAEMON | level.rawValue, text)
        }
    }
}

/// Informational lines of one event-loop turn (the per-connection lines), built in place and written with one
/// write(2) when the turn ends: under load many connections end per turn. syslog takes them one message each.
struct LogBatch {
    private var pending = LineBuilder(capacity: 4096)

    /// Adds a line that `build` writes (printable ASCII, no newline).
    mutating func info(_ build: (inout LineBuilder) -> Void) {
        guard Log.enabled(.info) else { return }
        switch Log.currentTarget {
        case .standardError:
            build(&pending)
            pending.append("\n")
        case .journal:
            pending.append("<6>")
            build(&pending)
            pending.append("\n")
        case .syslog:
            var line = LineBuilder()
            build(&line)
            Syscall.systemLog(LOG_DAEMON | LogLevel.info.rawValue, line.string)
        }
    }

    /// Writes the lines added since the last flush.
    mutating func flush() {
        guard !pending.bytes.isEmpty else { return }
        try? Syscall.writeAll(STDERR_FILENO, pending.bytes)
        pending.removeAll()
    }
}
