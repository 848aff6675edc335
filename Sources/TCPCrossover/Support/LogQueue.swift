import Glibc

/// Log lines on their way out while the relay runs: the event loops (and any other thread) append them to one
/// bounded buffer and a single writer thread writes them, so that a log reader that stops reading (a journal that
/// does not keep up, a standard error pipe nobody reads, a full /dev/log) blocks that thread only, never relaying.
/// When the buffer is full, lines are dropped and counted; once the writer can write again, it says how many
/// ("N log lines dropped").
///
/// Lines arrive already rendered for the target (see `Log.render`), so the writer does no formatting of its own.
/// A thread's lines keep their order. The writer thread starts with the first line. A process that serves one
/// connection (inetd, `Accept=yes`) has none: the lines of its connection (one, written when the connection has
/// ended) wait here and `drain` writes them at exit, which spares each process a thread (about 0.1 ms of CPU).
final class LogQueue: @unchecked Sendable {
    /// Bytes of lines that may wait: about 1,700 connection lines; the writer holds as much again while it writes.
    static let capacity = 256 * 1024
    /// How long the writer, woken by a line, waits for more before it writes: one write(2) and two wakes for all
    /// the lines of that time. A wake for every line cost a relay that logs each connection a fifth more CPU per
    /// connection (connections one at a time).
    static let gatherMilliseconds: Int64 = 20
    /// Lines waiting that end the gathering at once, so that a fast log never drops lines for want of room.
    static let gatherBytes = capacity / 4
    /// Room beyond `capacity` that only lines of notice level and above (the start and stop lines, warnings,
    /// errors) may take: a flood of connection lines that fills the queue does not cost the line that says the
    /// relay stops.
    static let reserve = 16 * 1024

    private enum WriterState {
        /// No line yet.
        case notStarted
        /// Asleep until a line arrives.
        case waiting
        /// Awake, waiting `gatherMilliseconds` for more lines before it writes.
        case gathering
        /// Awake: writing, or about to take lines.
        case running
        /// pthread_create failed: lines are written by the thread that logs them, as before the relay ran.
        case unavailable
        /// Asked to stop, and stopped.
        case stopped
    }

    /// Whether a writer thread writes the lines; without one they wait until `drain`.
    private let hasWriter: Bool
    private let lock = ConditionLock()
    // Guarded by `lock`:
    private var pending: [UInt8] = []
    private var dropped = 0
    private var writer = WriterState.notStarted
    /// The writer holds lines it has taken but not yet written.
    private var writing = false
    private var stopRequested = false
    /// Write without gathering: the buffer fills.
    private var hurry = false
    /// Write without gathering from now on: the process exits.
    private var draining = false
    private var thread: pthread_t?

    init(writerThread: Bool) {
        hasWriter = writerThread
    }

    /// Hands `bytes` (whole lines, `lines` of them, each ending in a newline) to the writer; the lines that do not
    /// fit are dropped and counted. `important` lines may take the `reserve`. False when there is no writer: the
    /// caller writes them itself.
    func submit(_ bytes: UnsafeRawBufferPointer, lines: Int, important: Bool = false) -> Bool {
        lock.withLock {
            switch writer {
            case .notStarted:
                guard hasWriter else { break }
                do {
                    thread = try Syscall.startThread { [self] in runWriter() }
                    writer = .running
                } catch {
                    writer = .unavailable
                    return false
                }
            case .waiting:
                writer = .running
                lock.broadcast()
            case .gathering:
                if !hurry && pending.count + bytes.count >= Self.gatherBytes {
                    hurry = true
                    lock.broadcast()
                }
            case .running:
                break
            case .unavailable, .stopped:
                return false
            }
            let room = Self.capacity + (important ? Self.reserve : 0) - pending.count
            let (kept, droppedLines) = Self.wholeLines(of: bytes, lines: lines, room: room)
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[..<kept]))
            dropped += droppedLines
            return true
        }
    }

    /// How many of `bytes` (`lines` whole lines) fit in `room` bytes without cutting a line, and how many lines are
    /// left out.
    static func wholeLines(of bytes: UnsafeRawBufferPointer, lines: Int, room: Int) -> (bytes: Int, dropped: Int) {
        if bytes.count <= room { return (bytes.count, 0) }
        var end = max(0, room)
        while end > 0 && bytes[end - 1] != UInt8(ascii: "\n") { end -= 1 }
        let kept = bytes[..<end].reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        return (end, lines - kept)
    }

    /// The writer thread: woken by a line, gathers lines for a moment, takes them all at once and writes them
    /// (blocking is fine here), then the count of lines dropped meanwhile; until asked to stop with nothing left.
    private func runWriter() {
        var batch: [UInt8] = []
        while true {
            var droppedNow = 0
            let stop: Bool = lock.withLock {
                while pending.isEmpty && dropped == 0 && !stopRequested {
                    writer = .waiting
                    lock.wait()
                }
                if pending.isEmpty && dropped == 0 {
                    writer = .stopped
                    lock.broadcast()
                    return true
                }
                let deadline = Syscall.monotonicMilliseconds() + Self.gatherMilliseconds
                writer = .gathering
                while !hurry && !draining && !stopRequested && pending.count < Self.gatherBytes {
                    if !lock.wait(until: deadline) { break }
                }
                hurry = false
                writer = .running
                writing = true
                swap(&pending, &batch)
                (droppedNow, dropped) = (dropped, 0)
                return false
            }
            if stop { return }
            Self.write(batch, dropped: droppedNow)
            batch.removeAll(keepingCapacity: true)
            lock.withLock {
                writing = false
                lock.broadcast()
            }
        }
    }

    /// Writes `batch`, then how many lines were dropped after it, if any.
    private static func write(_ batch: [UInt8], dropped: Int) {
        if !batch.isEmpty { batch.withUnsafeBytes { Log.output($0) } }
        if dropped > 0 { Log.render(.warning, "\(dropped) log lines dropped") { Log.output($0) } }
    }

    /// Waits until every line handed over so far is written, or until `deadline` (monotonic milliseconds); whether
    /// all were written. Without a writer thread, writes them on the calling thread.
    func drain(until deadline: Int64) -> Bool {
        var unwritten: [UInt8] = []
        var droppedNow = 0
        let drained: Bool = lock.withLock {
            if writer == .notStarted {
                (unwritten, droppedNow) = takeWaiting()
                return true
            }
            draining = true
            lock.broadcast()
            while !pending.isEmpty || dropped > 0 || writing {
                if !lock.wait(until: deadline) { break }
            }
            return pending.isEmpty && dropped == 0 && !writing
        }
        Self.write(unwritten, dropped: droppedNow)
        return drained
    }

    /// The lines waiting and the count of those dropped, taken out of the queue (with `lock` held, or in a test
    /// of a queue without a writer).
    func takeWaiting() -> (lines: [UInt8], dropped: Int) {
        defer {
            pending = []
            dropped = 0
        }
        return (pending, dropped)
    }

    /// Stops the writer thread once it has nothing left, and waits for it when `join` (not when it may be blocked
    /// in a write that never ends: the process exits around it).
    func stop(join: Bool) {
        let thread: pthread_t? = lock.withLock {
            stopRequested = true
            if writer == .waiting { writer = .running }
            lock.broadcast()
            return self.thread
        }
        if join, let thread { Syscall.joinThread(thread) }
    }
}
