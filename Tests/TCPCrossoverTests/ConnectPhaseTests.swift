import Glibc
import TCPCrossover
import TestSupport
import Testing

/// The connect phase's state machine, without sockets: the order of addresses, Happy Eyeballs, the per-attempt
/// timeout and the overall deadline, which failures count against a backend; and many random schedules against a
/// simulated network.
@Suite struct ConnectPhaseTests {
    static func target(_ text: String, remote: Int, port: UInt16 = 25) -> ConnectTarget {
        var address = SocketAddress(numericHost: text)!
        address.port = port
        return ConnectTarget(address, remote: remote)
    }

    static let source4 = SocketAddress(numericHost: "192.0.2.100")!
    static let source6 = SocketAddress(numericHost: "2001:db8::100")!

    // MARK: the order of addresses

    @Test func addressOrder_interleavesTheFamiliesWithinOneRemoteOnly() {
        let v6a = Self.target("2001:db8::1", remote: 0)
        let v6b = Self.target("2001:db8::2", remote: 0)
        let v4a = Self.target("192.0.2.1", remote: 0)
        let v4b = Self.target("192.0.2.2", remote: 0)
        let backup6 = Self.target("2001:db8::9", remote: 1)
        let backup4 = Self.target("192.0.2.9", remote: 1)
        #expect(AddressOrder.ordered([v6a, v6b, v4a, v4b]) == [v6a, v4a, v6b, v4b])
        // The family of the first address goes first; the longer family's rest comes at the end.
        #expect(AddressOrder.ordered([v4a, v4b, v6a]) == [v4a, v6a, v4b])
        #expect(AddressOrder.ordered([v4a, v6a, v6b]) == [v4a, v6a, v6b])
        // Remotes keep their order: the backup's addresses come after all of the first remote's.
        #expect(AddressOrder.ordered([v6a, v6b, v4a, backup4, backup6]) == [v6a, v4a, v6b, backup4, backup6])
        // One family, or one address per remote: as given.
        #expect(AddressOrder.ordered([v4a, v4b, backup4]) == [v4a, v4b, backup4])
        #expect(AddressOrder.ordered([]) == [])
        // A remote's addresses split by back-off (some went to the end) are ordered run by run.
        #expect(AddressOrder.ordered([v4a, backup4, v6a, v4b]) == [v4a, backup4, v6a, v4b])
    }

    // MARK: single schedules

    /// The log text of the give-up among `actions`, if there is one.
    static func failure(_ actions: [ConnectPhase.Action]) -> String? {
        for action in actions {
            if case .giveUp(let failure) = action { return failure.description }
        }
        return nil
    }

    /// Feeds one input and returns the actions.
    static func feed(_ phase: inout ConnectPhase, _ input: ConnectPhase.Input) -> [ConnectPhase.Action] {
        var actions: [ConnectPhase.Action] = []
        phase.processInput(input, into: &actions)
        return actions
    }

    @Test func happyEyeballs_triesTheOtherFamilyAfterTheAttemptDelayAndTheFirstToConnectWins() {
        let v6 = Self.target("2001:db8::1", remote: 0)
        let v4 = Self.target("192.0.2.1", remote: 0)
        var phase = ConnectPhase(targets: [v6, v4], sources: [Self.source4, Self.source6], timing: .init())
        #expect(
            Self.feed(&phase, .start(now: 1000)) == [.open(0, v6.address, source: Self.source6), .armTimer(at: 1250)])
        #expect(
            Self.feed(&phase, .timerFired(now: 1250)) == [
                .open(1, v4.address, source: Self.source4), .armTimer(at: 11_000),
            ])
        #expect(phase.attemptsInFlight == [0, 1])
        #expect(
            Self.feed(&phase, .connected(1, now: 1300)) == [.close(0, failure: nil), .relay(1, v4.address)])
        #expect(phase.state == .connected(1))
        // A late event of the loser changes nothing.
        #expect(Self.feed(&phase, .connected(0, now: 1301)) == [])
        #expect(Self.feed(&phase, .timerFired(now: 11_000)) == [])
    }

    @Test func failover_triesTheNextRemoteOnlyOnceTheFirstHasFailed() {
        let primary = Self.target("192.0.2.1", remote: 0)
        let backup = Self.target("192.0.2.2", remote: 1)
        let timing = ConnectPhase.Timing(attemptTimeout: 1000, deadline: 5000)
        var phase = ConnectPhase(targets: [primary, backup], sources: [], timing: timing)
        // No attempt delay towards another remote: only the attempt's timeout and the deadline.
        #expect(Self.feed(&phase, .start(now: 0)) == [.open(0, primary.address, source: nil), .armTimer(at: 1000)])
        #expect(
            Self.feed(&phase, .timerFired(now: 1000)) == [
                .close(0, failure: .timedOut(after: 1000)), .backOff(primary.address),
                .open(1, backup.address, source: nil), .armTimer(at: 2000),
            ])
        #expect(Self.feed(&phase, .connected(1, now: 1500)) == [.relay(1, backup.address)])
    }

    @Test func refusal_putsTheAddressInBackOffButALocalFailureDoesNot() {
        let first = Self.target("192.0.2.1", remote: 0)
        let second = Self.target("192.0.2.2", remote: 1)
        let third = Self.target("192.0.2.3", remote: 2)
        var phase = ConnectPhase(targets: [first, second, third], sources: [Self.source4], timing: .init())
        _ = Self.feed(&phase, .start(now: 0))
        let noPort = AttemptError(.connect, Errno(EADDRNOTAVAIL))
        #expect(
            Self.feed(&phase, .failed(0, noPort, now: 1)) == [
                .close(0, failure: .error(noPort)), .open(1, second.address, source: Self.source4),
                .armTimer(at: 10_001),
            ])
        let bind = AttemptError(.bind, Errno(EADDRINUSE))
        #expect(
            Self.feed(&phase, .failed(1, bind, now: 2)) == [
                .close(1, failure: .error(bind)), .open(2, third.address, source: Self.source4), .armTimer(at: 10_002),
            ])
        let refused = AttemptError(.connect, .connectionRefused)
        let actions = Self.feed(&phase, .failed(2, refused, now: 3))
        #expect(actions.prefix(2) == [.close(2, failure: .error(refused)), .backOff(third.address)])
        guard case .giveUp(let failure) = actions.last else {
            Issue.record("no give-up: \(actions)")
            return
        }
        #expect(
            failure.description
                == "connect to 192.0.2.1:25 failed: Cannot assign requested address; connect to 192.0.2.2:25 failed: "
                + "bind to the source address: Address already in use; connect to 192.0.2.3:25 failed: Connection "
                + "refused")
        #expect(phase.state == .failed)
    }

    @Test func deadline_endsThePhaseAndNamesWhatEachAddressDid() {
        let targets = (1...3).map { Self.target("192.0.2.\($0)", remote: $0) }
        let timing = ConnectPhase.Timing(attemptTimeout: 1000, deadline: 1500)
        var phase = ConnectPhase(targets: targets, sources: [], timing: timing)
        _ = Self.feed(&phase, .start(now: 0))
        #expect(
            Self.feed(&phase, .timerFired(now: 1000)) == [
                .close(0, failure: .timedOut(after: 1000)), .backOff(targets[0].address),
                .open(1, targets[1].address, source: nil), .armTimer(at: 1500),
            ])
        let actions = Self.feed(&phase, .timerFired(now: 1500))
        // Cut short by the deadline: no back-off, it did not have its whole time.
        #expect(actions.first == .close(1, failure: .timedOut(after: 500)))
        #expect(actions.count == 2)
        guard case .giveUp(let failure) = actions.last else {
            Issue.record("no give-up: \(actions)")
            return
        }
        #expect(
            failure.description
                == "connect to 192.0.2.1:25 timed out after 1 s; connect to 192.0.2.2:25 timed out after 0.5 s; "
                + "192.0.2.3:25 not tried within the connect deadline of 1.5 s")
    }

    @Test func outOfDescriptors_theSameAddressIsTriedAgainUntilTheDeadline() {
        let only = Self.target("192.0.2.1", remote: 0)
        let timing = ConnectPhase.Timing(attemptTimeout: 1000, deadline: 250)
        var phase = ConnectPhase(targets: [only], sources: [], timing: timing)
        _ = Self.feed(&phase, .start(now: 0))
        let exhausted = AttemptError(.socket, .tooManyOpenFiles)
        #expect(Self.feed(&phase, .failed(0, exhausted, now: 0)) == [.close(0, failure: nil), .armTimer(at: 100)])
        #expect(
            Self.feed(&phase, .timerFired(now: 100)) == [.open(0, only.address, source: nil), .armTimer(at: 250)])
        #expect(Self.feed(&phase, .failed(0, exhausted, now: 100)) == [.close(0, failure: nil), .armTimer(at: 200)])
        _ = Self.feed(&phase, .timerFired(now: 200))
        _ = Self.feed(&phase, .failed(0, exhausted, now: 200))
        let actions = Self.feed(&phase, .timerFired(now: 250))
        #expect(actions == [.giveUp(ConnectFailureReport(attempts: [(only, .error(exhausted))], deadline: 250))])
        #expect(Self.failure(actions) == "connect to 192.0.2.1:25 failed: socket: Too many open files")
    }

    @Test func noAddress_givesUpAtOnce() {
        var phase = ConnectPhase(targets: [], sources: [], timing: .init())
        let actions = Self.feed(&phase, .start(now: 0))
        #expect(Self.failure(actions) == "no remote address to connect to")
        #expect(phase.state == .failed)
    }
}
