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

/// The process's log. It is set up at start, before any thread runs, and only read while threads run.
///
/// Before the relay runs and after it has stopped, lines are written at once by the thread that logs them; while it
/// runs (`startQueueing` to `finish`), they go through a `LogQueue`, so that a log that cannot take them never
/// stalls an event loop.
public enum Log {
    nonisolated(unsafe) private static var target: LogTarget = .standardError
    nonisolated(unsafe) private static var threshold: LogLevel = .info
    nonisolated(unsafe) private static var queue: LogQueue?

    public static let identifier = "tcp-crossover"

    /// Sets where lines go and the most detailed level written.
    public static func configure(target: LogTarget, level: LogLevel) {
        if target == .syslog { Syscall.openSystemLog(identifier: identifier, facility: LOG_DAEMON) }
        Self.target = target
        Self.threshold = level
    }

    public static var currentTarget: LogTarget { target }

    /// From now on lines go through a `LogQueue`: written by a thread of their own (started with the first line)
    /// when `writerThread`, or else at `finish`. Call before the relay's threads start, after any fork.
    public static func startQueueing(writerThread: Bool) {
        if queue == nil { queue = LogQueue(writerThread: writerThread) }
    }

    /// Writes what is still queued, waiting at most `milliseconds` for a writer thread that a log does not let
    /// write (lines still waiting then are lost), and goes back to writing lines at once. Call when no other thread
    /// logs any more.
    public static func finish(within milliseconds: Int64) {
        guard let queue else { return }
        Self.queue = nil
        let drained = queue.drain(until: Syscall.monotonicMilliseconds() + milliseconds)
        queue.stop(join: drained)
    }

    /// Whether lines of `level` are written: lets a caller skip building a debug message.
    @inline(__always)
    public static func enabled(_ level: LogLevel) -> Bool { level <= threshold }

    /// Writes `tcp-crossover: line` to standard error, whatever the log target: for the command's own messages
    /// (a bad option, a failure at start) before the relay runs.
    public static func console(_ line: String) {
        var text = "\(identifier): \(printable(line))\n"
        if target != .syslog, let queue {
            // After the lines queued before it, on the same descriptor.
            let queued = text.withUTF8 { queue.submit(UnsafeRawBufferPointer($0), lines: 1, important: true) }
            if queued { return }
        }
        try? Syscall.writeAll(STDERR_FILENO, &text)
    }

    public static func error(_ message: @autoclosure () -> String) { write(.error, message) }
    public static func warning(_ message: @autoclosure () -> String) { write(.warning, message) }
    public static func notice(_ message: @autoclosure () -> String) { write(.notice, message) }
    public static func info(_ message: @autoclosure () -> String) { write(.info, message) }
    public static func debug(_ message: @autoclosure () -> String) { write(.debug, message) }

    private static func write(_ level: LogLevel, _ message: () -> String) {
        guard enabled(level) else { return }
        render(level, printable(message())) { emit($0, lines: 1, important: level <= .notice) }
    }

    /// `text` (printable, no newline) as the target takes it: `text\n` on standard error, `<level>text\n` for the
    /// journal (sd-daemon priority prefixes) and for syslog (where `output` takes the level from it).
    static func render(_ level: LogLevel, _ text: String, _ body: (UnsafeRawBufferPointer) -> Void) {
        var line = target == .standardError ? text + "\n" : "<\(level.rawValue)>\(text)\n"
        line.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }

    /// Hands rendered lines to the writer thread while the relay runs, or writes them now. `important` lines
    /// (notice and above) are the last to be dropped.
    static func emit(_ lines: UnsafeRawBufferPointer, lines count: Int, important: Bool = false) {
        if let queue, queue.submit(lines, lines: count, important: important) { return }
        output(lines)
    }

    /// Writes rendered lines to the target: one write(2) to standard error, or one syslog(3) message per line.
    /// Blocks while the log does not take them.
    static func output(_ lines: UnsafeRawBufferPointer) {
        switch target {
        case .standardError, .journal:
            try? Syscall.writeAll(STDERR_FILENO, lines)
        case .syslog:
            var start = 0
            while start < lines.count {
                var end = start
                while end < lines.count && lines[end] != UInt8(ascii: "\n") { end += 1 }
                var priority = LogLevel.info.rawValue
                var text = start
                // `<N>`, one digit.
                if end - start >= 3 && lines[start] == UInt8(ascii: "<") && lines[start + 2] == UInt8(ascii: ">") {
                    priority = CInt(lines[start + 1]) - CInt(UInt8(ascii: "0"))
                    text = start + 3
                }
                Syscall.systemLog(LOG_DAEMON | priority, UnsafeRawBufferPointer(rebasing: lines[text..<end]))
                start = end + 1
            }
        }
    }
}

/// Informational lines of one event-loop turn (the per-connection lines), built in place, rendered for the target,
/// and handed on together when the turn ends: under load many connections end per turn.
struct LogBatch {
    private var pending = LineBuilder(capacity: 4096)
    private var lines = 0

    /// Adds a line that `build` writes (printable ASCII, no newline).
    mutating func info(_ build: (inout LineBuilder) -> Void) {
        guard Log.enabled(.info) else { return }
        if Log.currentTarget != .standardError { pending.append("<6>") }
        build(&pending)
        pending.append("\n")
        lines += 1
        // A turn that ends thousands of connections (a load generator closing them all at once) hands its lines on
        // in parts, so that the log writer starts on them at once (`LogQueue.gatherBytes`) rather than getting more
        // than the queue holds in one piece, which it would have to drop however fast the log is.
        if pending.bytes.count >= Self.partBytes { flush() }
    }

    /// The size of the parts a turn's lines are handed on in: a quarter of what the log writer gathers before it
    /// writes at once.
    static let partBytes = LogQueue.gatherBytes / 4

    /// Hands on the lines added since the last flush (see `Log.emit`).
    mutating func flush() {
        guard lines > 0 else { return }
        pending.bytes.withUnsafeBytes { Log.emit($0, lines: lines) }
        pending.removeAll()
        lines = 0
    }
}
