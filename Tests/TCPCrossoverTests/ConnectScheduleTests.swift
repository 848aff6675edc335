import Glibc
import TCPCrossover
import TestSupport
import Testing

/// What the network and this machine do with a connect to one address, in the simulation.
enum SimulatedRemote: Equatable {
    /// The handshake completes after this many milliseconds.
    case accepts(after: Int64)
    /// A reset (or an ICMP error) comes back after this many milliseconds.
    case refuses(after: Int64, Errno)
    /// Nothing comes back: a black hole.
    case silent
    /// This machine cannot even start the attempt (a bind to the source fails, no free port).
    case localFailure(AttemptError)
}

/// A simulated kernel and network for the connect phase: sockets that connect, fail or hang after random delays,
/// descriptors that run out, a timer that fires late. It drives a `ConnectPhase` as the event loop does (feeds its
/// inputs, performs its actions) and records everything, for the invariants.
struct SimulatedConnects {
    var random: SeededRandom
    var remotes: [SocketAddress: SimulatedRemote]
    /// The next `exhausted` socket(2) calls fail with EMFILE.
    var exhausted = 0
    var now: Int64 = 0
    var timer: Int64?
    var phase: ConnectPhase

    /// One socket the phase opened.
    struct Socket {
        let attempt: Int
        let address: SocketAddress
        let opened: Int64
        /// When its connect finishes (connected or failed); nil: never.
        let finishes: Int64?
        var closed = 0
        var relayed = false
        /// Its refusal was fed to the phase.
        var refusalFed = false
    }

    var sockets: [Socket] = []
    var opens: [(attempt: Int, time: Int64, source: SocketAddress?)] = []
    var backOffs: [SocketAddress] = []
    var relayed: (attempt: Int, address: SocketAddress)?
    var givenUp: ConnectFailureReport?
    var actionsAfterEnd = 0
    var violations: [String] = []
    /// When the last failure was fed, and the last attempt opened: a further attempt of the same remote alongside
    /// others needs the one or the attempt delay since the other.
    var lastFailureAt: Int64?
    var lastOpenAt: Int64?
    /// The most attempts in flight at once, and the opens that found no descriptor.
    var mostInFlight = 0
    var exhaustedOpens = 0

    init(seed: UInt64, remotes: [SocketAddress: SimulatedRemote], phase: ConnectPhase) {
        random = SeededRandom(seed: seed)
        self.remotes = remotes
        self.phase = phase
    }

    var ended: Bool { relayed != nil || givenUp != nil }

    /// Feeds one input and performs the actions; what an open does at once is fed next.
    mutating func feed(_ input: ConnectPhase.Input) {
        var pending: ConnectPhase.Input? = input
        while let input = pending {
            pending = nil
            let wasEnded = ended
            if case .failed = input { lastFailureAt = now }
            var actions: [ConnectPhase.Action] = []
            phase.processInput(input, into: &actions)
            if wasEnded && !actions.isEmpty { actionsAfterEnd += 1 }
            for action in actions {
                switch action {
                case .open(let attempt, let address, let source):
                    if pending != nil { violations.append("two opens for one input") }
                    pending = open(attempt, address, source: source)
                case .close(let attempt, _):
                    // The attempt's last socket, unless its open failed before there was one.
                    if let index = sockets.lastIndex(where: { $0.attempt == attempt && $0.closed == 0 }) {
                        sockets[index].closed += 1
                    } else if !opens.contains(where: { $0.attempt == attempt }) {
                        violations.append("close of attempt \(attempt), never opened")
                    }
                case .armTimer(let due):
                    if due < now { violations.append("timer armed in the past: \(due) at \(now)") }
                    timer = due
                case .backOff(let address):
                    backOffs.append(address)
                case .relay(let attempt, let address):
                    if relayed != nil { violations.append("relayed twice") }
                    relayed = (attempt, address)
                    if let index = sockets.lastIndex(where: { $0.attempt == attempt && $0.closed == 0 }) {
                        sockets[index].relayed = true
                    } else {
                        violations.append("relay of attempt \(attempt), which has no open socket")
                    }
                case .giveUp(let failure):
                    if givenUp != nil { violations.append("gave up twice") }
                    givenUp = failure
                }
            }
        }
    }

    private mutating func open(_ attempt: Int, _ address: SocketAddress, source: SocketAddress?)
        -> ConnectPhase.Input?
    {
        opens.append((attempt, now, source))
        mostInFlight = max(mostInFlight, phase.attemptsInFlight.count)
        // Happy Eyeballs within one remote only, and only after the attempt delay or a failure.
        let others = phase.attemptsInFlight.filter { $0 != attempt }
        if !others.isEmpty {
            let remote = phase.targets[attempt].remote
            if others.contains(where: { phase.targets[$0].remote != remote }) {
                violations.append("attempt \(attempt) opened beside attempts of another remote: \(others)")
            }
            let delayed = lastOpenAt.map { now - $0 >= phase.timing.attemptDelay } ?? true
            if !delayed && lastFailureAt != now {
                violations.append("attempt \(attempt) opened at \(now), before the attempt delay")
            }
        }
        lastOpenAt = now
        if exhausted > 0 {
            exhausted -= 1
            exhaustedOpens += 1
            return .failed(attempt, AttemptError(.socket, .tooManyOpenFiles), now: now)
        }
        let behaviour = remotes[address]!
        var finishes: Int64?
        switch behaviour {
        case .accepts(let after), .refuses(let after, _): finishes = now + after
        case .silent: finishes = nil
        case .localFailure: finishes = nil
        }
        sockets.append(Socket(attempt: attempt, address: address, opened: now, finishes: finishes))
        if case .localFailure(let error) = behaviour { return .failed(attempt, error, now: now) }
        return nil
    }

    /// Runs the phase to its end: the earliest of the timer and the sockets' outcomes comes next; the timer fires
    /// up to 30 ms late at random (a busy loop), and outcomes due at the same time come in random order.
    mutating func run() {
        feed(.start(now: now))
        for _ in 0..<10_000 where !ended {
            let open = sockets.indices.filter { sockets[$0].closed == 0 && !sockets[$0].relayed }
            let nextSocket = open.compactMap { sockets[$0].finishes }.min()
            let lateTimer = timer.map { $0 + Int64.random(in: 0...30, using: &random) }
            guard let next = [nextSocket, lateTimer].compactMap({ $0 }).min() else {
                violations.append("nothing to wait for, and the phase has not ended")
                return
            }
            now = max(now, next)
            if let lateTimer, lateTimer <= now, nextSocket.map({ $0 > now }) ?? true || Bool.random(using: &random) {
                timer = nil
                feed(.timerFired(now: now))
                checkAfterTimer()
                continue
            }
            let due = open.filter { sockets[$0].finishes.map { $0 <= now } ?? false }.shuffled(using: &random)
            for index in due where sockets[index].closed == 0 {
                let socket = sockets[index]
                switch remotes[socket.address]! {
                case .accepts: feed(.connected(socket.attempt, now: now))
                case .refuses(_, let errno):
                    sockets[index].refusalFed = true
                    feed(.failed(socket.attempt, AttemptError(.connect, errno), now: now))
                case .silent, .localFailure: break
                }
            }
        }
        if !ended { violations.append("did not end within 10,000 steps") }
    }

    /// After a timer: no attempt has outlived its timeout, and past the deadline the phase is over.
    private mutating func checkAfterTimer() {
        for attempt in phase.attemptsInFlight {
            guard let socket = sockets.last(where: { $0.attempt == attempt }) else { continue }
            if socket.opened + phase.timing.attemptTimeout <= now {
                violations.append("attempt \(attempt) still in flight at \(now), opened at \(socket.opened)")
            }
        }
        if now >= phase.timing.deadline && !ended { violations.append("not over at \(now), past the deadline") }
    }
}

@Suite struct ConnectScheduleTests {
    static let families: [[String]] = [
        ["192.0.2.1", "192.0.2.2", "192.0.2.3"], ["2001:db8::1", "2001:db8::2", "2001:db8::3"],
    ]

    /// A random setup: one to three remotes of one to four addresses, of either or both families, each with a
    /// random behaviour; random timings.
    static func scenario(seed: UInt64) -> SimulatedConnects {
        var random = SeededRandom(seed: seed &* 7919 &+ 1)
        var targets: [ConnectTarget] = []
        var remotes: [SocketAddress: SimulatedRemote] = [:]
        var counter = 0
        for remote in 0..<Int.random(in: 1...3, using: &random) {
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                counter += 1
                let ipv6 = Bool.random(using: &random)
                var address = SocketAddress(numericHost: ipv6 ? "2001:db8::\(counter)" : "192.0.2.\(counter)")!
                address.port = 25
                targets.append(ConnectTarget(address, remote: remote))
                switch Int.random(in: 0..<10, using: &random) {
                case 0..<3: remotes[address] = .accepts(after: Int64.random(in: 0...1500, using: &random))
                case 3..<5:
                    let errno = [Errno.connectionRefused, Errno(EHOSTUNREACH), Errno(ENETUNREACH)].randomElement(
                        using: &random)!
                    remotes[address] = .refuses(after: Int64.random(in: 0...500, using: &random), errno)
                case 5..<8: remotes[address] = .silent
                default:
                    let error = [
                        AttemptError(.bind, Errno(EADDRNOTAVAIL)), AttemptError(.connect, Errno(EADDRNOTAVAIL)),
                        AttemptError(.setsockopt, Errno(EINVAL)),
                    ].randomElement(using: &random)!
                    remotes[address] = .localFailure(error)
                }
            }
        }
        let timing = ConnectPhase.Timing(
            attemptTimeout: Int64.random(in: 100...2000, using: &random),
            deadline: Int64.random(in: 200...5000, using: &random), attemptDelay: 250, descriptorRetry: 100)
        let sources = [
            SocketAddress(numericHost: "192.0.2.100")!, SocketAddress(numericHost: "2001:db8::100")!,
        ]
        var simulation = SimulatedConnects(
            seed: seed, remotes: remotes, phase: ConnectPhase(targets: targets, sources: sources, timing: timing))
        simulation.exhausted = Int.random(in: 0..<10, using: &random) == 0 ? Int.random(in: 1...5, using: &random) : 0
        return simulation
    }

    /// 300 random schedules; for each, the invariants of the connect phase. The schedules must have covered the
    /// cases that matter (so that the invariants were not checked on easy schedules only).
    @Test func randomSchedules_keepTheInvariants() {
        var relayed = 0
        var givenUp = 0
        var deadlinePassed = 0
        var sideBySide = 0
        var outOfDescriptors = 0
        for seed in UInt64(1)...300 {
            var simulation = Self.scenario(seed: seed)
            simulation.run()
            Self.check(simulation, seed: seed)
            if simulation.relayed != nil { relayed += 1 }
            if let failure = simulation.givenUp {
                givenUp += 1
                if failure.description.contains("not tried within") { deadlinePassed += 1 }
            }
            if simulation.mostInFlight > 1 { sideBySide += 1 }
            if simulation.exhaustedOpens > 0 { outOfDescriptors += 1 }
        }
        #expect(relayed > 30 && givenUp > 30, "\(relayed) relayed, \(givenUp) given up")
        #expect(deadlinePassed > 10, "\(deadlinePassed) ended by the deadline")
        #expect(sideBySide > 10, "\(sideBySide) with attempts side by side")
        #expect(outOfDescriptors > 10, "\(outOfDescriptors) out of descriptors")
    }

    static func check(_ simulation: SimulatedConnects, seed: UInt64) {
        let phase = simulation.phase
        let targets = phase.targets
        #expect(simulation.violations.isEmpty, "seed \(seed): \(simulation.violations)")
        #expect(simulation.ended, "seed \(seed)")
        #expect(simulation.actionsAfterEnd == 0, "seed \(seed): actions after the end")
        // Every socket opened is closed exactly once, but the one relayed, which stays open.
        for socket in simulation.sockets {
            #expect(socket.closed == (socket.relayed ? 0 : 1), "seed \(seed): socket of attempt \(socket.attempt)")
        }
        // Attempts start in the order of the targets (an attempt may start again after running out of descriptors),
        // each from the source of its family.
        for (previous, next) in zip(simulation.opens, simulation.opens.dropFirst()) {
            #expect(next.attempt == previous.attempt + 1 || next.attempt == previous.attempt, "seed \(seed)")
        }
        for open in simulation.opens {
            #expect(open.source?.family == targets[open.attempt].address.family, "seed \(seed)")
        }
        if let relayed = simulation.relayed {
            // Relayed: an address that accepts, within its time.
            guard case .accepts = simulation.remotes[relayed.address]! else {
                Issue.record("seed \(seed): relayed to an address that does not accept")
                return
            }
            #expect(targets[relayed.attempt].address == relayed.address, "seed \(seed)")
        }
        if let failure = simulation.givenUp {
            // Given up: every address appears once in the failure, with what it did.
            #expect(failure.attempts.count == targets.count, "seed \(seed): \(failure)")
            #expect(Set(failure.attempts.map(\.target)) == Set(targets), "seed \(seed): \(failure)")
            for (target, attempt) in failure.attempts {
                switch (simulation.remotes[target.address]!, attempt) {
                case (_, .notTried), (.silent, .timedOut), (.accepts, .timedOut), (.refuses, .timedOut):
                    break
                case (.refuses(_, let errno), .error(let error)):
                    #expect(error == AttemptError(.connect, errno), "seed \(seed)")
                case (.localFailure(let expected), .error(let error)):
                    #expect(error == expected, "seed \(seed)")
                case (_, .error(let error)) where error.isResourceExhaustion:
                    break
                default:
                    Issue.record("seed \(seed): \(target) \(attempt) for \(simulation.remotes[target.address]!)")
                }
            }
        }
        // Back-off only for what the backend did: a refusal or a whole timeout; never for a local failure.
        for address in simulation.backOffs {
            switch simulation.remotes[address]! {
            case .refuses, .silent, .accepts: break
            case .localFailure: Issue.record("seed \(seed): back-off of \(address) after a local failure")
            }
        }
        // And always after a refusal.
        for socket in simulation.sockets where socket.refusalFed {
            #expect(
                simulation.backOffs.contains(socket.address), "seed \(seed): \(socket.address) refused, no back-off")
        }
    }
}
