/// The connect phase of one connection as a value, after swift-nio's Happy Eyeballs connector (RFC 8305): the
/// event loop feeds it inputs (start, an attempt connected or failed, the timer fired) and performs the actions it
/// returns (open a socket and connect it, close one, arm the timer, put an address in back-off, relay, give up).
/// Everything it decides is here, without a socket, so that tests can run it against a simulated kernel:
///
/// - the order of the addresses (`AddressOrder`): remotes in their configured order, families taking turns within
///   one remote's addresses;
/// - the source address of each attempt: the `--source` of its family;
/// - Happy Eyeballs within one remote's addresses: while an attempt has no answer after `attemptDelay`, the next
///   address of the same remote is tried alongside; the first to connect wins and the others are closed. The next
///   remote in the list is tried only once every attempt of the one before has failed;
/// - the per-attempt timeout and the overall deadline: no attempt outlives either, and when the deadline passes
///   the client is given up with what each address did;
/// - which failures count against the backend (refused, unreachable, timed out: back-off) and which are this
///   machine's own (no free port, the source address unusable, out of descriptors: no back-off); out of
///   descriptors, the same address is tried again every `descriptorRetry` until the deadline.
public struct ConnectPhase: Sendable {
    /// The timings, in milliseconds, with RFC 8305's default for the delay between attempts.
    public struct Timing: Equatable, Sendable {
        /// How long one attempt may take (`--connect-timeout`).
        public var attemptTimeout: Int64
        /// How long the whole connect phase may take (`--connect-deadline`).
        public var deadline: Int64
        /// After this long without an answer, the next address of the same remote is tried alongside (RFC 8305
        /// "Connection Attempt Delay").
        public var attemptDelay: Int64
        /// Out of descriptors: how soon a socket is tried again.
        public var descriptorRetry: Int64

        public init(
            attemptTimeout: Int64 = 10_000, deadline: Int64 = 30_000, attemptDelay: Int64 = 250,
            descriptorRetry: Int64 = 100
        ) {
            self.attemptTimeout = attemptTimeout
            self.deadline = deadline
            self.attemptDelay = attemptDelay
            self.descriptorRetry = descriptorRetry
        }
    }

    /// An attempt: the position of its target in the order of attempts.
    public typealias Attempt = Int

    public enum State: Equatable, Sendable {
        case idle
        /// Attempts are in flight, or the next one waits for its timer (a descriptor, the attempt delay).
        case connecting
        /// The attempt connected: relaying over its socket.
        case connected(Attempt)
        /// Every address failed, or the deadline passed.
        case failed
    }

    public enum Input: Equatable, Sendable {
        case start(now: Int64)
        /// The attempt's socket is connected.
        case connected(Attempt, now: Int64)
        /// A call for the attempt failed: opening its socket, binding it, the connect itself.
        case failed(Attempt, AttemptError, now: Int64)
        /// The time of the last `.armTimer` has come.
        case timerFired(now: Int64)
    }

    public enum Action: Equatable, Sendable {
        /// Open a socket of the address's family, bind it to `source` if there is one, and connect it to `address`;
        /// report the outcome (`.connected` or `.failed`), at once or when the socket says.
        case open(Attempt, SocketAddress, source: SocketAddress?)
        /// Close the attempt's socket (if it has one): it failed (`failure` says how, for the log), or another
        /// attempt connected first (nil).
        case close(Attempt, failure: AttemptFailure?)
        /// Feed `.timerFired` at this time; replaces the time armed before.
        case armTimer(at: Int64)
        /// The address failed through no fault of this machine's: try it last for a while.
        case backOff(SocketAddress)
        /// Relay over the attempt's socket; the address is no longer in back-off.
        case relay(Attempt, SocketAddress)
        /// No address could be connected: end the client's connection.
        case giveUp(ConnectFailureReport)
    }

    public let timing: Timing
    public private(set) var state = State.idle
    /// The targets in the order they are tried; an attempt is a position here.
    public let targets: [ConnectTarget]
    private let sources: [SocketAddress]
    /// The next target to try.
    private var next = 0
    /// Attempts in flight and when each began.
    private var inFlight: [(attempt: Attempt, began: Int64)] = []
    /// When the whole phase must be over.
    private var deadlineAt: Int64 = 0
    /// When the next attempt of the same remote starts alongside those in flight.
    private var nextAttemptAt: Int64?
    /// Out of descriptors: when the next target is tried again, and the error that said so.
    private var retryAt: Int64?
    private var exhaustion: AttemptError?
    /// What each attempt that ended did, in the order they ended.
    public private(set) var failures: [(target: ConnectTarget, failure: AttemptFailure)] = []

    /// `targets` in the pool's order (not yet interleaved); `sources`, at most one per family.
    public init(targets: [ConnectTarget], sources: [SocketAddress], timing: Timing) {
        self.targets = AddressOrder.ordered(targets)
        self.sources = sources
        self.timing = timing
    }

    /// The attempts whose sockets are open or being opened.
    public var attemptsInFlight: [Attempt] { inFlight.map(\.attempt) }

    /// The one transition function: what `input` does in the current state. Appends the actions, in the order to
    /// perform them, to `actions` (a buffer the driver keeps, so that a connect allocates no array for them).
    public mutating func processInput(_ input: Input, into actions: inout [Action]) {
        switch (state, input) {
        case (.idle, .start(let now)):
            state = .connecting
            deadlineAt = now + timing.deadline
            startNext(now: now, &actions)
        case (.connecting, .connected(let attempt, _)):
            guard let index = inFlight.firstIndex(where: { $0.attempt == attempt }) else { return }
            inFlight.remove(at: index)
            for other in inFlight { actions.append(.close(other.attempt, failure: nil)) }
            inFlight.removeAll()
            state = .connected(attempt)
            actions.append(.relay(attempt, targets[attempt].address))
        case (.connecting, .failed(let attempt, let error, let now)):
            guard let index = inFlight.firstIndex(where: { $0.attempt == attempt }) else { return }
            inFlight.remove(at: index)
            // Out of descriptors (or memory) when opening the last attempt begun: not the address's fault.
            let waitForResources = error.isResourceExhaustion && attempt == next - 1
            actions.append(.close(attempt, failure: waitForResources ? nil : .error(error)))
            if waitForResources {
                // The same target again in a moment, nothing else meanwhile.
                next = attempt
                exhaustion = error
                nextAttemptAt = nil
                retryAt = now + timing.descriptorRetry
            } else {
                failures.append((targets[attempt], .error(error)))
                if error.countsAgainstBackend { actions.append(.backOff(targets[attempt].address)) }
                // RFC 8305: a failure starts the next attempt at once, without waiting for the delay.
                if retryAt == nil && (inFlight.isEmpty || sameRemoteNext) { startNext(now: now, &actions) }
            }
        case (.connecting, .timerFired(let now)):
            timerFired(now: now, &actions)
        case (.idle, _), (.connecting, .start), (.connected, _), (.failed, _):
            // A stale input: an event or timer for a phase that is over, or a second start. Nothing to do.
            return
        }
        guard state == .connecting else { return }
        if inFlight.isEmpty && retryAt == nil && next == targets.count {
            giveUp(&actions)
        } else {
            actions.append(.armTimer(at: timerDue))
        }
    }

    private mutating func timerFired(now: Int64, _ actions: inout [Action]) {
        if now >= deadlineAt {
            for attempt in inFlight {
                // An attempt whose own timeout had come (the timer fired late) timed out as any other.
                let ownTimeout = attempt.began + timing.attemptTimeout <= now
                let failure = AttemptFailure.timedOut(after: ownTimeout ? timing.attemptTimeout : now - attempt.began)
                actions.append(.close(attempt.attempt, failure: failure))
                if ownTimeout { actions.append(.backOff(targets[attempt.attempt].address)) }
                failures.append((targets[attempt.attempt], failure))
            }
            inFlight.removeAll()
            if retryAt != nil, let exhaustion, next < targets.count {
                failures.append((targets[next], .error(exhaustion)))
                next += 1
            }
            retryAt = nil
            nextAttemptAt = nil
            for position in next..<targets.count { failures.append((targets[position], .notTried)) }
            next = targets.count
            return
        }
        var index = 0
        while index < inFlight.count {
            let attempt = inFlight[index]
            guard attempt.began + timing.attemptTimeout <= now else {
                index += 1
                continue
            }
            inFlight.remove(at: index)
            let failure = AttemptFailure.timedOut(after: timing.attemptTimeout)
            actions.append(.close(attempt.attempt, failure: failure))
            actions.append(.backOff(targets[attempt.attempt].address))
            failures.append((targets[attempt.attempt], failure))
        }
        if let retry = retryAt, retry <= now {
            retryAt = nil
            startNext(now: now, &actions)
        } else if let due = nextAttemptAt, due <= now {
            nextAttemptAt = nil
            startNext(now: now, &actions)
        } else if inFlight.isEmpty && retryAt == nil {
            // The attempts in flight timed out.
            startNext(now: now, &actions)
        }
    }

    /// Whether the next target belongs to the remote of the attempts in flight (so it may go alongside them).
    private var sameRemoteNext: Bool {
        guard next < targets.count, let last = inFlight.last else { return false }
        return targets[next].remote == targets[last.attempt].remote
    }

    private mutating func startNext(now: Int64, _ actions: inout [Action]) {
        nextAttemptAt = nil
        guard next < targets.count else { return }
        let attempt = next
        next += 1
        let target = targets[attempt]
        inFlight.append((attempt, now))
        actions.append(.open(attempt, target.address, source: sources.first { $0.family == target.address.family }))
        if next < targets.count && targets[next].remote == target.remote { nextAttemptAt = now + timing.attemptDelay }
    }

    private var timerDue: Int64 {
        var due = deadlineAt
        for attempt in inFlight { due = min(due, attempt.began + timing.attemptTimeout) }
        if let nextAttemptAt { due = min(due, nextAttemptAt) }
        if let retryAt { due = min(due, retryAt) }
        return due
    }

    private mutating func giveUp(_ actions: inout [Action]) {
        state = .failed
        actions.append(.giveUp(ConnectFailureReport(attempts: failures, deadline: timing.deadline)))
    }
}

/// A call of a connect attempt that failed, and the errno.
public struct AttemptError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Operation: String, Sendable {
        case socket, setsockopt, bind, register, connect
    }

    public let operation: Operation
    public let errno: Errno

    public init(_ operation: Operation, _ errno: Errno) {
        self.operation = operation
        self.errno = errno
    }

    /// Out of descriptors or memory: the connection waits for them, as it would in the listen backlog.
    public var isResourceExhaustion: Bool { errno.isResourceExhaustion }

    /// Whether the failure says something about the backend (it refused, or no route reaches it), rather than
    /// about this machine (no free port, the `--source` address unusable, out of descriptors), which must not
    /// put a healthy backend in back-off.
    public var countsAgainstBackend: Bool { operation == .connect && !errno.isLocalConnectFailure }

    public var description: String {
        switch operation {
        case .connect: return errno.description
        case .bind: return "bind to the source address: \(errno)"
        case .socket, .setsockopt, .register: return "\(operation.rawValue): \(errno)"
        }
    }
}

/// How one address failed, for the log line.
public enum AttemptFailure: Equatable, Sendable {
    case error(AttemptError)
    /// No answer within the time (the per-attempt timeout, or what the deadline left it).
    case timedOut(after: Int64)
    /// The deadline passed before its turn.
    case notTried
}

/// Every address failed: what each one did. Reads as the end of the connection's log line:
/// `connect to 192.0.2.1:25 timed out after 10 s; connect to 127.0.0.1:25 failed: Connection refused`.
public struct ConnectFailureReport: Error, Equatable, Sendable, CustomStringConvertible {
    public let attempts: [(target: ConnectTarget, failure: AttemptFailure)]
    /// The overall deadline, in milliseconds, for the addresses it left untried.
    public let deadline: Int64

    public init(attempts: [(target: ConnectTarget, failure: AttemptFailure)], deadline: Int64) {
        self.attempts = attempts
        self.deadline = deadline
    }

    public static func == (left: Self, right: Self) -> Bool {
        left.description == right.description
    }

    public var description: String {
        guard !attempts.isEmpty else { return "no remote address to connect to" }
        return attempts.map { Self.describe($0.target, $0.failure, deadline: deadline) }.joined(separator: "; ")
    }

    /// One attempt's part: `connect to ADDRESS failed: REASON`, `... timed out after N s`, `ADDRESS not tried`.
    public static func describe(_ target: ConnectTarget, _ failure: AttemptFailure, deadline: Int64) -> String {
        switch failure {
        case .error(let error): return "connect to \(target) failed: \(error)"
        case .timedOut(let after): return "connect to \(target) timed out after \(seconds(after)) s"
        case .notTried: return "\(target) not tried within the connect deadline of \(seconds(deadline)) s"
        }
    }

    private static func seconds(_ milliseconds: Int64) -> String {
        let whole = milliseconds / 1000
        let fraction = milliseconds % 1000
        guard fraction != 0 else { return "\(whole)" }
        var digits = String(fraction)
        digits = String(repeating: "0", count: 3 - digits.count) + digits
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(whole).\(digits)"
    }
}

extension ConnectFailure {
    /// The metrics' class of how one attempt failed (`tcp_crossover_connect_failures_total`).
    init(_ failure: AttemptFailure) {
        switch failure {
        case .timedOut: self = .timeout
        case .error(let error) where error.operation == .connect: self = ConnectFailure(error.errno)
        case .error(let error): self = error.isResourceExhaustion ? .noDescriptor : .other
        case .notTried: self = .other
        }
    }
}
