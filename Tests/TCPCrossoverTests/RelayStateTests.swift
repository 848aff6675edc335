import TCPCrossover
import TestSupport
import Testing

/// The relay's state machine against the simulated kernel: bytes, order, half-closes, resets, back-pressure and
/// the hand-back of pipes and buffers, over many random schedules.
@Suite struct RelayStateTests {
    struct Scenario {
        var seed: UInt64
        var clientBytes = 0
        var serverBytes = 0
        var clientEndsFirst = true
        var pipeCapacity = 64 * 1024
        var largestPipeCapacity: Int?
        var pipeBudget = Int.max
        var spliceUnsupported = false
        var pipesUnavailable = false
        var window = 64 * 1024
        /// A side whose connection fails (a reset, or a timeout) at a random moment: after its peer sent its FIN
        /// when `failsAfterEnd`, before it otherwise. Its peer sends and reads nothing more from then on.
        var failingSide: Side?
        var failsAfterEnd = true
        /// The relay is handed over to a new process (snapshot, then restore) at random moments when it holds no
        /// bytes, as a restart under systemd does.
        var handsOver = false
    }

    struct Outcome {
        var step: RelayState.Step
        var kernel: SimulatedKernel
        var sentByClient: [UInt8]
        var sentByServer: [UInt8]
        var relay: RelayState
        /// The relay waited with bytes held back for a FIN it had not sent.
        var waitedWithBytesHeldBack = false
        /// The failing side's peer had sent its FIN when its connection failed.
        var failedAfterItsEnd = false
        var failed = false
        /// How many times the relay was handed over, and how many of those with bytes in a pipe.
        var handOvers = 0
        var handOversWithPipes = 0
    }

    /// Runs a whole connection: both peers send their bytes in random chunks and end, in the scenario's order,
    /// while reading at random; the relay is advanced in between with random budgets. Returns when the relay says
    /// finished or failed, or after a bound on steps (a stall).
    func run(_ scenario: Scenario) -> Outcome {
        let kernel = SimulatedKernel(
            seed: scenario.seed, pipeCapacity: scenario.pipeCapacity, largestPipeCapacity: scenario.largestPipeCapacity)
        kernel.pipeBudget = scenario.pipeBudget
        kernel.spliceUnsupported = scenario.spliceUnsupported
        kernel.pipesUnavailable = scenario.pipesUnavailable
        kernel.client.window = scenario.window
        kernel.server.window = scenario.window
        var random = SeededRandom(seed: scenario.seed &* 31 &+ 7)
        let sentByClient = randomBytes(scenario.clientBytes, &random)
        let sentByServer = randomBytes(scenario.serverBytes, &random)
        var clientOffset = 0
        var serverOffset = 0
        var clientEnded = false
        var serverEnded = false
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        var waitedWithBytesHeldBack = false
        var failed = false
        var failedAfterItsEnd = false
        var handOvers = 0
        var handOversWithPipes = 0
        func outcome(_ step: RelayState.Step) -> Outcome {
            Outcome(
                step: step, kernel: kernel, sentByClient: sentByClient, sentByServer: sentByServer, relay: relay,
                waitedWithBytesHeldBack: waitedWithBytesHeldBack, failedAfterItsEnd: failedAfterItsEnd, failed: failed,
                handOvers: handOvers, handOversWithPipes: handOversWithPipes)
        }

        for _ in 0..<200_000 {
            // A failed peer neither sends nor ends any more.
            let clientAlive = !(failed && scenario.failingSide == .client)
            let serverAlive = !(failed && scenario.failingSide == .server)
            // Choices 6 and 7 (failures) only where the scenario has one, so that the other schedules stay as they were.
            switch Int.random(in: 0..<(scenario.failingSide == nil ? 6 : 8), using: &random) {
            case 6 where !failed:
                guard let side = scenario.failingSide, Int.random(in: 0..<4, using: &random) == 0 else { break }
                let ended = kernel.socket(side).peerEnded
                guard ended == scenario.failsAfterEnd else { break }
                // A reset, or (a third of the time) a timeout: a peer that vanished.
                if Int.random(in: 0..<3, using: &random) == 0 {
                    kernel.peerFails(side, .timedOut, readiness: &relay.readiness)
                } else {
                    kernel.peerResets(side, readiness: &relay.readiness)
                }
                failed = true
                failedAfterItsEnd = ended
            case 7 where failed:
                // The event loop asks for the error that epoll reported, if no call took it yet.
                if let side = scenario.failingSide, let error = kernel.takePendingError(side) {
                    relay.reportFailure(of: side, error)
                }
            case 5 where scenario.handsOver:
                // A restart: the old process stores the sockets and the pipes that hold bytes with the snapshot, and
                // gives its other pipes back; the new one restores the relay from them. epoll reports the sockets'
                // state when the new process registers them: the hang-ups and errors come again, while readability
                // and room are found out by the first calls.
                relay.moveHeldBytesIntoPipes(&io)
                guard let snapshot = relay.snapshot else { break }
                let pipes = relay.detachPipesInTransit()
                relay.releaseResources(&io)
                let reported = relay.readiness
                relay = RelayState(restoring: snapshot, upstreamPipe: pipes.upstream, downstreamPipe: pipes.downstream)
                for side in [Side.client, .server] {
                    relay.readiness[side].hungUp = reported[side].hungUp
                    relay.readiness[side].endReported = reported[side].endReported
                    relay.readiness[side].failed = reported[side].failed
                    relay.readiness[side].urgent = reported[side].urgent
                }
                #expect(relay.snapshot == snapshot)
                handOvers += 1
                if snapshot.clientToServer.pipeBytes + snapshot.serverToClient.pipeBytes > 0 { handOversWithPipes += 1 }
            case 0 where clientOffset < sentByClient.count && clientAlive:
                let count = min(sentByClient.count - clientOffset, Int.random(in: 1...70_000, using: &random))
                kernel.peerSends(
                    .client, Array(sentByClient[clientOffset..<(clientOffset + count)]),
                    readiness: &relay.readiness)
                clientOffset += count
            case 1 where serverOffset < sentByServer.count && serverAlive:
                let count = min(sentByServer.count - serverOffset, Int.random(in: 1...70_000, using: &random))
                kernel.peerSends(
                    .server, Array(sentByServer[serverOffset..<(serverOffset + count)]),
                    readiness: &relay.readiness)
                serverOffset += count
            case 2:
                kernel.peerReads(
                    .client, upTo: Int.random(in: 1...100_000, using: &random), readiness: &relay.readiness)
            case 3:
                kernel.peerReads(
                    .server, upTo: Int.random(in: 1...100_000, using: &random), readiness: &relay.readiness)
            case 4:
                // Ends come once all bytes are sent, in the scenario's order. Until a failure has come, a side that is
                // to fail after its end ends first, and the other side waits for that failure; a side that is to fail
                // before its end does not end.
                let pending = failed ? nil : scenario.failingSide
                let waits = { (side: Side) in
                    pending.map { scenario.failsAfterEnd ? $0 != side : $0 == side } ?? false
                }
                let clientDone = clientOffset == sentByClient.count && clientAlive && !waits(.client)
                let serverDone = serverOffset == sentByServer.count && serverAlive && !waits(.server)
                let clientEndsFirst =
                    pending != nil && scenario.failsAfterEnd ? pending == .client : scenario.clientEndsFirst
                if clientEndsFirst || serverEnded {
                    if clientDone && !clientEnded {
                        kernel.peerEnds(.client, readiness: &relay.readiness)
                        clientEnded = true
                    } else if clientEnded && serverDone && !serverEnded {
                        kernel.peerEnds(.server, readiness: &relay.readiness)
                        serverEnded = true
                    }
                } else if serverDone && !serverEnded {
                    kernel.peerEnds(.server, readiness: &relay.readiness)
                    serverEnded = true
                }
            default:
                let step = relay.advance(&io, budget: Int.random(in: 1...16, using: &random))
                if step == .finished { kernel.closeFinishedConnection() }
                switch step {
                case .finished, .failed:
                    return outcome(step)
                case .failedOnceAcknowledged(let side, _):
                    // The event loop resets once the other side has acknowledged everything; until then it goes on.
                    if kernel.socket(side.other).unread == 0 { return outcome(step) }
                case .waiting:
                    if kernel.client.heldForEnd || kernel.server.heldForEnd { waitedWithBytesHeldBack = true }
                case .moreWork:
                    break
                }
            }
        }
        return outcome(.waiting)
    }

    /// Every byte arrives, in order, each side gets exactly one FIN after its last byte, and the relay gives back
    /// every pipe and buffer.
    func expectComplete(_ outcome: Outcome, _ scenario: Scenario) {
        #expect(outcome.step == .finished, "seed \(scenario.seed)")
        let kernel = outcome.kernel
        // Compared as booleans: a failing comparison of the arrays would print megabytes.
        let upstreamIntact = kernel.server.received == outcome.sentByClient
        let downstreamIntact = kernel.client.received == outcome.sentByServer
        #expect(upstreamIntact, "seed \(scenario.seed): client to server bytes differ")
        #expect(downstreamIntact, "seed \(scenario.seed): server to client bytes differ")
        #expect(kernel.server.finsReceived == 1 && kernel.client.finsReceived == 1, "seed \(scenario.seed)")
        #expect(!outcome.waitedWithBytesHeldBack, "seed \(scenario.seed): bytes held back for a FIN not sent")
        #expect(outcome.relay.bytes.up == UInt64(outcome.sentByClient.count))
        #expect(outcome.relay.bytes.down == UInt64(outcome.sentByServer.count))
        var relay = outcome.relay
        var io = SimulatedKernel.IO(kernel: kernel)
        relay.releaseResources(&io)
        #expect(kernel.pipesInUse == 0 && kernel.buffersInUse == 0, "seed \(scenario.seed)")
        #expect(kernel.pipeBudget == scenario.pipeBudget, "seed \(scenario.seed): pipe budget not given back")
    }

    @Test func relay_whenBothSidesSendAndClose_everyByteArrivesInOrder() {
        for seed in UInt64(1)...150 {
            var random = SeededRandom(seed: seed)
            var scenario = Scenario(
                seed: seed,
                clientBytes: Int.random(in: 0...300_000, using: &random),
                serverBytes: Int.random(in: 0...300_000, using: &random),
                clientEndsFirst: Bool.random(using: &random),
                pipeCapacity: [8192, 65536, 1 << 20].randomElement(using: &random)!,
                window: Int.random(in: 1...200_000, using: &random))
            // Pipes that may grow, within a budget that may run out.
            scenario.largestPipeCapacity = scenario.pipeCapacity * [1, 4, 16].randomElement(using: &random)!
            scenario.pipeBudget = [Int.max, 0, 3 * scenario.pipeCapacity].randomElement(using: &random)!
            expectComplete(run(scenario), scenario)
        }
    }

    /// A restart in the middle of a transfer: the relay is snapshotted and restored with its pipes (as a stopping
    /// process hands its connections to the next through systemd's file descriptor store) whenever it holds no bytes
    /// outside them, and every byte still arrives in order, with one FIN each way.
    @Test func relay_whenHandedOverMidTransfer_everyByteArrivesInOrder() {
        var handOvers = 0
        var handOversWithPipes = 0
        for seed in UInt64(1)...150 {
            var random = SeededRandom(seed: seed &+ 1000)
            let scenario = Scenario(
                seed: seed,
                clientBytes: Int.random(in: 0...300_000, using: &random),
                serverBytes: Int.random(in: 0...300_000, using: &random),
                clientEndsFirst: Bool.random(using: &random),
                pipeCapacity: [8192, 65536, 1 << 20].randomElement(using: &random)!,
                window: Int.random(in: 1...200_000, using: &random),
                handsOver: true)
            let outcome = run(scenario)
            expectComplete(outcome, scenario)
            handOvers += outcome.handOvers
            handOversWithPipes += outcome.handOversWithPipes
        }
        // The schedules did hand over, many times, and often with bytes in a pipe.
        #expect(handOvers > 500, "\(handOvers) hand-overs")
        #expect(handOversWithPipes > 100, "\(handOversWithPipes) hand-overs with bytes in a pipe")
    }

    /// Bytes held in a copy buffer (the server took only part of them) cannot be described by a snapshot; moved into
    /// a pipe, they can, and after the hand-over they reach the server, in order, before anything sent later.
    @Test func handOver_whenBytesAreHeldInACopyBuffer_movesThemIntoAPipe() {
        let kernel = SimulatedKernel(seed: 71, pipeCapacity: 65536)
        kernel.server.window = 1000
        var io = SimulatedKernel.IO(kernel: kernel)
        var relay = RelayState.connected()
        var random = SeededRandom(seed: 72)
        let first = randomBytes(6000, &random)
        let later = randomBytes(3000, &random)
        kernel.peerSends(.client, first, readiness: &relay.readiness)
        for _ in 0..<20 { _ = relay.advance(&io, budget: 4) }
        #expect(kernel.server.received.count < first.count, "the server took everything: nothing held")
        #expect(relay.snapshot == nil)
        relay.moveHeldBytesIntoPipes(&io)
        let snapshot = relay.snapshot
        #expect(snapshot?.clientToServer.pipeBytes == first.count - kernel.server.received.count)
        guard let snapshot else { return }
        let pipes = relay.detachPipesInTransit()
        relay.releaseResources(&io)
        #expect(kernel.buffersInUse == 0)
        var restored = RelayState(restoring: snapshot, upstreamPipe: pipes.upstream, downstreamPipe: pipes.downstream)
        kernel.peerSends(.client, later, readiness: &restored.readiness)
        for _ in 0..<200 where kernel.server.received.count < first.count + later.count {
            kernel.peerReads(.server, upTo: 700, readiness: &restored.readiness)
            _ = restored.advance(&io, budget: 4)
        }
        #expect(kernel.server.received == first + later)
        #expect(restored.bytes.up == UInt64(first.count + later.count))
    }

    /// Held bytes from one receive can be more than a starting pipe takes (a receive is 64 KiB, a pipe starts at
    /// 16): the pipe grows to take them for the hand-over, and they arrive whole after it.
    @Test func handOver_whenMoreIsHeldThanAStartingPipeTakes_thePipeGrowsToTakeIt() {
        let kernel = SimulatedKernel(
            seed: 73, pipeCapacity: 16 << 10, largestPipeCapacity: 1 << 20, copyChunk: 64 << 10)
        kernel.client.window = 5000
        var io = SimulatedKernel.IO(kernel: kernel)
        var relay = RelayState.connected()
        var random = SeededRandom(seed: 74)
        let response = randomBytes(50_000, &random)
        kernel.peerSends(.server, response, readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 4)
        #expect(kernel.bufferBytesInUse == 45_000)
        relay.moveHeldBytesIntoPipes(&io)
        let snapshot = relay.snapshot
        #expect(snapshot?.serverToClient.pipeBytes == 45_000)
        #expect(kernel.buffersInUse == 0)
        guard let snapshot else { return }
        let pipes = relay.detachPipesInTransit()
        relay.releaseResources(&io)
        var restored = RelayState(restoring: snapshot, upstreamPipe: pipes.upstream, downstreamPipe: pipes.downstream)
        for _ in 0..<100 where kernel.client.received.count < response.count {
            kernel.peerReads(.client, upTo: 5000, readiness: &restored.readiness)
            _ = restored.advance(&io, budget: 4)
        }
        #expect(kernel.client.received == response)
    }

    /// A connection whose `scenario.failingSide` failed: what a side sent before its FIN reaches the other side
    /// whole, with a FIN, unless the other side's connection failed; a side that failed before its FIN aborts the
    /// connection, and the other side gets no FIN from it.
    func expectFailureHandled(_ outcome: Outcome, _ scenario: Scenario) {
        let kernel = outcome.kernel
        guard let failing = scenario.failingSide, outcome.failed else {
            // The failure did not come about in this schedule: a normal connection.
            expectComplete(outcome, scenario)
            return
        }
        let seed = "seed \(scenario.seed), \(failing) fails \(outcome.failedAfterItsEnd ? "after" : "before") its end"
        let other = kernel.socket(failing.other)
        let sentByFailing = failing == .client ? outcome.sentByClient : outcome.sentByServer
        let sentByOther = failing == .client ? outcome.sentByServer : outcome.sentByClient
        if outcome.failedAfterItsEnd {
            // Everything the failed side sent, then one FIN; the reset, if any, once all of it is acknowledged.
            let intact = other.received == sentByFailing
            #expect(intact, "\(seed): \(other.received.count) of \(sentByFailing.count) bytes arrived")
            #expect(other.finsReceived == 1 || other.shutdownCount == 1, "\(seed)")
            let lost = outcome.relay.clientToServer.lostBytes + outcome.relay.serverToClient.lostBytes
            switch outcome.step {
            case .finished:
                // Nothing was lost: the failed side had taken all that the other side sent.
                #expect(lost == 0, "\(seed)")
                // Unless the connection finished before the relay learnt of the failure (the failed side's error
                // came after the last FIN was passed on), nothing was lost: the failed side had taken everything.
                let taken = kernel.socket(failing).delivered == sentByOther
                #expect(taken || outcome.relay.failedAfterEnd == nil, "\(seed): finished though bytes were lost")
            case .failedOnceAcknowledged(let side, _):
                #expect(side == failing && lost > 0, "\(seed)")
                #expect(other.unread == 0, "\(seed): reset before everything was acknowledged")
            default:
                Issue.record("\(seed): ended with \(outcome.step)")
            }
        } else {
            // Cut short: the connection aborts, and the other side never sees a clean end of that stream.
            guard case .failed(let side, _) = outcome.step else {
                Issue.record("\(seed): ended with \(outcome.step)")
                return
            }
            #expect(side == failing, "\(seed)")
            #expect(other.shutdownCount == 0 && !other.closed, "\(seed): a FIN for a stream cut short")
        }
        var relay = outcome.relay
        var io = SimulatedKernel.IO(kernel: kernel)
        relay.releaseResources(&io)
        #expect(kernel.pipesInUse == 0 && kernel.buffersInUse == 0, "\(seed)")
    }

    /// The schedules of `relay_whenBothSidesSendAndClose_…`, with one side's connection failing (a reset, or a
    /// timeout) at a random moment, mostly after that side's FIN: bytes the server sent before its FIN all reach
    /// the client unless the client's side fails, and the other way round.
    @Test func relay_whenASideFails_whatItSentBeforeItsFINStillArrives() {
        var failures = (after: 0, before: 0, finished: 0, reset: 0)
        for seed in UInt64(1)...150 {
            var random = SeededRandom(seed: seed &+ 1000)
            let scenario = Scenario(
                seed: seed,
                clientBytes: Int.random(in: 0...300_000, using: &random),
                serverBytes: Int.random(in: 0...300_000, using: &random),
                clientEndsFirst: Bool.random(using: &random),
                pipeCapacity: [8192, 65536, 1 << 20].randomElement(using: &random)!,
                window: Int.random(in: 1...200_000, using: &random),
                failingSide: Bool.random(using: &random) ? .client : .server,
                failsAfterEnd: Int.random(in: 0..<4, using: &random) > 0)
            let outcome = run(scenario)
            if outcome.failed {
                if outcome.failedAfterItsEnd { failures.after += 1 } else { failures.before += 1 }
                if outcome.step == .finished { failures.finished += 1 }
                if case .failedOnceAcknowledged = outcome.step { failures.reset += 1 }
            }
            expectFailureHandled(outcome, scenario)
        }
        // The schedules do reach each case, many times: a failure after the end that lost bytes towards the failed side
        // and one that did not, and a failure before the end.
        #expect(failures.after > 50 && failures.before > 10, "\(failures)")
        #expect(failures.finished > 10 && failures.reset > 10, "\(failures)")
    }

    /// The reported case: the server sent its response and its FIN, which wait unread behind a full pipe for a
    /// client that reads slowly; then a keepalive probe draws a reset (EPIPE), which epoll reports and the event
    /// loop passes on. The client still gets the whole response and a FIN; the connection completes when the client
    /// ends, since nothing it sent was lost.
    @Test func relay_whenTheServerResetsAfterItsFIN_theSlowClientStillGetsTheWholeResponse() {
        let kernel = SimulatedKernel(seed: 47, pipeCapacity: 65536)
        kernel.client.window = 10_000
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        let response = randomBytes(1_000_000, &kernel.random)
        kernel.peerSends(.client, Array("GET /".utf8), readiness: &relay.readiness)
        kernel.peerSends(.server, response, readiness: &relay.readiness)
        kernel.peerEnds(.server, readiness: &relay.readiness)
        for _ in 0..<10 { _ = relay.advance(&io, budget: 16) }
        kernel.peerReads(.server, upTo: 100, readiness: &relay.readiness)
        #expect(kernel.server.available > 0, "the response's tail waits in the server's socket")
        kernel.peerResets(.server, readiness: &relay.readiness)
        relay.reportFailure(of: .server, kernel.takePendingError(.server)!)
        var step = relay.advance(&io, budget: 16)
        #expect(step == .waiting || step == .moreWork)
        for _ in 0..<10_000 where kernel.client.delivered.count < response.count {
            kernel.peerReads(.client, upTo: 5000, readiness: &relay.readiness)
            step = relay.advance(&io, budget: 16)
        }
        let intact = kernel.client.delivered == response
        #expect(intact, "\(kernel.client.delivered.count) of \(response.count) bytes")
        #expect(kernel.client.shutdownCount == 1)
        #expect(step == .waiting)
        kernel.peerEnds(.client, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .finished)
        #expect(relay.failedAfterEnd?.side == .server)
    }

    /// The server sent its response and FIN and is gone; the client sends more, which cannot reach it: the client
    /// gets the whole response and its FIN first, then a reset, once it has acknowledged all of it.
    @Test func relay_whenTheClientSendsAfterTheServerFailed_itIsResetOnlyAfterTheWholeResponse() {
        let kernel = SimulatedKernel(seed: 53, pipeCapacity: 65536)
        kernel.client.window = 10_000
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        let response = randomBytes(300_000, &kernel.random)
        kernel.peerSends(.server, response, readiness: &relay.readiness)
        kernel.peerEnds(.server, readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        // The client's next request goes to a server that has closed: its kernel answers with a reset.
        kernel.peerSends(.client, Array("GET /again".utf8), readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        #expect(kernel.server.unread == 10)
        kernel.peerResets(.server, readiness: &relay.readiness)
        relay.reportFailure(of: .server, kernel.takePendingError(.server)!)
        var step = relay.advance(&io, budget: 16)
        #expect(relay.clientToServer.lostBytes == 10)
        kernel.peerSends(.client, Array("more".utf8), readiness: &relay.readiness)
        for _ in 0..<10_000 {
            step = relay.advance(&io, budget: 16)
            if case .failedOnceAcknowledged = step, kernel.client.unread == 0 { break }
            kernel.peerReads(.client, upTo: 5000, readiness: &relay.readiness)
        }
        #expect(step == .failedOnceAcknowledged(.server, .brokenPipe))
        let intact = kernel.client.delivered == response
        #expect(intact, "\(kernel.client.delivered.count) of \(response.count) bytes")
        #expect(kernel.client.shutdownCount == 1)
        #expect(relay.clientToServer.lostBytes == 14)
    }

    /// A reset without a FIN before it cuts the server's stream short: the connection aborts, even when the error
    /// comes from a send or from SO_ERROR, after which a receive could no longer tell a FIN from a reset.
    @Test func relay_whenTheServerResetsBeforeItsFIN_theConnectionAborts() {
        for reported in [false, true] {
            let kernel = SimulatedKernel(seed: 59)
            var relay = RelayState.connected()
            var io = SimulatedKernel.IO(kernel: kernel)
            kernel.peerSends(.server, Array(repeating: 1, count: 5000), readiness: &relay.readiness)
            kernel.peerResets(.server, readiness: &relay.readiness)
            if reported {
                relay.reportFailure(of: .server, kernel.takePendingError(.server)!)
            } else {
                kernel.peerSends(.client, [2], readiness: &relay.readiness)
            }
            #expect(relay.advance(&io, budget: 16) == .failed(.server, .connectionReset), "reported: \(reported)")
            #expect(kernel.client.shutdownCount == 0)
        }
    }

    @Test func relay_whenClientHalfClosesFirst_serverReplyStillArrives() {
        let scenario = Scenario(seed: 7, clientBytes: 1000, serverBytes: 500_000, clientEndsFirst: true)
        let outcome = run(scenario)
        expectComplete(outcome, scenario)
        #expect(outcome.relay.firstToEnd == .client)
    }

    @Test func relay_whenServerHalfClosesFirst_clientBytesStillArrive() {
        let scenario = Scenario(seed: 11, clientBytes: 500_000, serverBytes: 1000, clientEndsFirst: false)
        let outcome = run(scenario)
        expectComplete(outcome, scenario)
        #expect(outcome.relay.firstToEnd == .server)
    }

    @Test func relay_whenNothingIsSent_endsAreStillPassedOn() {
        for clientEndsFirst in [true, false] {
            let scenario = Scenario(seed: 3, clientEndsFirst: clientEndsFirst)
            expectComplete(run(scenario), scenario)
        }
    }

    @Test func relay_whenSpliceIsUnsupported_copiesEverything() {
        for seed in UInt64(1)...20 {
            let scenario = Scenario(seed: seed, clientBytes: 200_000, serverBytes: 100_000, spliceUnsupported: true)
            expectComplete(run(scenario), scenario)
        }
    }

    @Test func relay_whenNoPipeCanBeHad_copiesEverything() {
        for seed in UInt64(1)...20 {
            let scenario = Scenario(seed: seed, clientBytes: 200_000, serverBytes: 100_000, pipesUnavailable: true)
            expectComplete(run(scenario), scenario)
        }
    }

    @Test func relay_whenServerResets_failsOnTheServerSide() {
        let kernel = SimulatedKernel(seed: 5)
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        kernel.peerSends(.client, Array(repeating: 1, count: 5000), readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .waiting)
        kernel.peerResets(.server, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .failed(.server, .connectionReset))
    }

    @Test func relay_whenClientResetsDuringDownload_failsOnTheClientSide() {
        let kernel = SimulatedKernel(seed: 9)
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        kernel.peerSends(.server, Array(repeating: 2, count: 400_000), readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        kernel.peerResets(.client, readiness: &relay.readiness)
        var step = RelayState.Step.waiting
        for _ in 0..<10 where step == .waiting || step == .moreWork {
            kernel.peerSends(.server, [3], readiness: &relay.readiness)
            step = relay.advance(&io, budget: 16)
        }
        #expect(step == .failed(.client, .connectionReset))
    }

    /// A server that reads nothing makes the relay stop reading from the client: it holds no more than one pipe
    /// and one buffer of bytes beyond what the server's socket takes.
    @Test func relay_whenServerDoesNotRead_clientIsSlowedDown() {
        let scenarioWindow = 100_000
        let kernel = SimulatedKernel(seed: 13, pipeCapacity: 65536)
        kernel.server.window = scenarioWindow
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        for _ in 0..<200 {
            kernel.peerSends(.client, Array(repeating: 4, count: 50_000), readiness: &relay.readiness)
            _ = relay.advance(&io, budget: 16)
        }
        #expect(kernel.server.unread == scenarioWindow)
        #expect(kernel.client.incomingOffset <= scenarioWindow + 65536 + 16 * 1024)
        #expect(kernel.client.available > 9_000_000)
    }

    /// A client that never reads what the server sends pins little: the relay's client socket fills, then the pipe
    /// (the first pipe, 64 KiB: the flow earned one growth at most, since the client's socket buffers took too
    /// little to earn more), and the server's socket was limited to a receive buffer in proportion to what the flow
    /// earned (SO_RCVBUF), so that the kernel's autotuning does not grow it to tcp_rmem's maximum while nothing is
    /// read.
    @Test func relay_whenTheClientNeverReads_thePipeStaysSmallAndTheServerSocketIsLimited() {
        let absorbed = 2_600_000  // what the relay's client socket and the client's receive buffer take, as measured
        let kernel = SimulatedKernel(seed: 47, pipeCapacity: 16 << 10, largestPipeCapacity: 1 << 20)
        kernel.client.window = absorbed
        var relay = RelayState.connected()
        relay.serverIsOnThisMachine()
        var io = SimulatedKernel.IO(kernel: kernel)
        for _ in 0..<400 {
            kernel.peerSends(.server, Array(repeating: 6, count: 100_000), readiness: &relay.readiness)
            _ = relay.advance(&io, budget: 16)
        }
        #expect(kernel.client.unread == absorbed)
        let earned = relay.serverToClient.earnedPipeCapacity
        #expect(earned >= 16 << 10 && earned <= 32 << 10)
        #expect(kernel.pipeCapacityInUse == Direction.firstPipe)
        #expect(kernel.server.receiveBuffer == Direction.receiveBuffer(forPipe: earned))
        // What the relay took from the server and holds: the pipe and the copy buffer at most.
        #expect(kernel.server.incomingOffset - absorbed <= Direction.firstPipe + 16 << 10)
        // The client's socket takes little more than what is in flight.
        #expect(kernel.client.unsentLimit == Direction.unsentPerPipe * earned)
        // The direction that carried nothing left the client's socket to the kernel.
        #expect(kernel.client.receiveBuffer == nil)
    }

    /// A client that reads as fast as the server sends: the pipe is what holds the flow back, so it grows to the
    /// largest size (256 KiB here), and the server's receive buffer grows with it, a few calls in all.
    @Test func relay_whenTheClientReadsFast_thePipeGrowsToTheLargestAndTheReceiveBufferFollows() {
        let kernel = SimulatedKernel(seed: 53, pipeCapacity: 16 << 10, largestPipeCapacity: 256 << 10)
        kernel.client.window = 64 << 20
        var relay = RelayState.connected()
        relay.serverIsOnThisMachine()
        var io = SimulatedKernel.IO(kernel: kernel)
        var random = SeededRandom(seed: 53)
        let sent = randomBytes(24_000_000, &random)
        var offset = 0
        for _ in 0..<20_000 where kernel.client.delivered.count < sent.count {
            if offset < sent.count {
                let count = min(sent.count - offset, 2_000_000)
                kernel.peerSends(.server, Array(sent[offset..<(offset + count)]), readiness: &relay.readiness)
                offset += count
            }
            _ = relay.advance(&io, budget: 16)
            kernel.peerReads(.client, upTo: 64 << 20, readiness: &relay.readiness)
        }
        let intact = kernel.client.delivered == sent
        #expect(intact)
        #expect(relay.serverToClient.earnedPipeCapacity == 256 << 10)
        #expect(kernel.pipeCapacityInUse == 256 << 10)
        #expect(kernel.server.receiveBuffer == Direction.receiveBuffer(forPipe: 256 << 10))
        // No more than the pipe: the pipe is the relay's buffer (see `Direction.receiveBufferPerPipe`).
        #expect((kernel.server.receiveBuffer ?? .max) <= 256 << 10)
        #expect(kernel.client.unsentLimit == Direction.unsentPerPipe * 256 << 10)
        // 16 KiB to 256 KiB: the first pipe (64 KiB) at the start, then two doublings; one receive buffer at the
        // start (64 KiB, the least), then one for each pipe beyond that (128 and 256 KiB).
        #expect(kernel.pipeGrowths == 3)
        #expect(kernel.server.receiveBufferChanges == 3)
    }

    /// A response of most of a mebibyte on a new connection, which earns no growth, goes through the first pipe
    /// (64 KiB, lent by the budget) rather than the starting 16 KiB: fewer than half the splices, while the limits
    /// that bound a reader that stops stay those of the starting pipe. The budget gets its loan back when the pipe
    /// goes back to the pool; with the budget spent, the starting pipe carries the response.
    @Test func relay_whenANewConnectionDownloads_itSplicesThroughTheFirstPipe() {
        let size = 900_000
        func download(budget: Int) -> (kernel: SimulatedKernel, relay: RelayState, largestPipe: Int) {
            let kernel = SimulatedKernel(seed: 67, pipeCapacity: 16 << 10, largestPipeCapacity: 1 << 20)
            kernel.pipeBudget = budget
            kernel.client.window = 64 << 20
            var relay = RelayState.connected()
            relay.serverIsOnThisMachine()
            var io = SimulatedKernel.IO(kernel: kernel)
            kernel.peerSends(.server, Array(repeating: 9, count: size), readiness: &relay.readiness)
            var largestPipe = 0
            for _ in 0..<2_000 where kernel.client.delivered.count < size {
                _ = relay.advance(&io, budget: 16)
                largestPipe = max(largestPipe, kernel.pipeCapacityInUse)
                kernel.peerReads(.client, upTo: 64 << 20, readiness: &relay.readiness)
            }
            #expect(kernel.client.delivered.count == size)
            #expect(relay.serverToClient.earnedPipeCapacity == 16 << 10)
            #expect(kernel.server.receiveBuffer == Direction.receiveBuffer(forPipe: 16 << 10))
            #expect(kernel.client.unsentLimit == Direction.unsentPerPipe * 16 << 10)
            return (kernel, relay, largestPipe)
        }
        let starting = download(budget: 0)
        #expect(starting.largestPipe == 16 << 10)
        let first = download(budget: 1 << 20)
        let kernel = first.kernel
        var relay = first.relay
        #expect(first.largestPipe == Direction.firstPipe)
        #expect(kernel.server.receives * 2 < starting.kernel.server.receives)
        #expect(kernel.pipeBudget == (1 << 20) - (Direction.firstPipe - 16 << 10))
        // The source goes quiet: the pipe goes back, and the budget gets its loan back.
        var io = SimulatedKernel.IO(kernel: kernel)
        kernel.peerSends(.server, [1], readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        #expect(kernel.pipesInUse == 0)
        #expect(kernel.pipeBudget == 1 << 20)
    }

    /// A server elsewhere keeps the kernel's autotuning of the relay's receive buffer: over a long round trip the
    /// window, not the pipe, sets the pace, and a limited one would slow the download for good. The pipe still grows
    /// with the flow.
    @Test func relay_whenTheServerIsElsewhere_itsReceiveBufferIsLeftToTheKernel() {
        let kernel = SimulatedKernel(seed: 61, pipeCapacity: 16 << 10, largestPipeCapacity: 256 << 10)
        kernel.client.window = 64 << 20
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        kernel.peerSends(.server, Array(repeating: 3, count: 32_000_000), readiness: &relay.readiness)
        for _ in 0..<40_000 where kernel.client.delivered.count < 32_000_000 {
            _ = relay.advance(&io, budget: 16)
            kernel.peerReads(.client, upTo: 64 << 20, readiness: &relay.readiness)
        }
        #expect(kernel.client.delivered.count == 32_000_000)
        #expect(kernel.server.receiveBuffer == nil && kernel.client.receiveBuffer == nil)
        #expect(relay.serverToClient.earnedPipeCapacity == 256 << 10)
    }

    /// With the process's pipe budget spent, a fast flow keeps its starting pipe, and every byte still arrives; the
    /// receive buffer still follows the flow.
    @Test func relay_whenThePipeBudgetIsSpent_thePipeKeepsItsSizeAndEveryByteArrives() {
        let kernel = SimulatedKernel(seed: 59, pipeCapacity: 16 << 10, largestPipeCapacity: 1 << 20)
        kernel.pipeBudget = 0
        kernel.client.window = 64 << 20
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        var random = SeededRandom(seed: 59)
        let sent = randomBytes(20_000_000, &random)
        kernel.peerSends(.server, sent, readiness: &relay.readiness)
        for _ in 0..<20_000 where kernel.client.delivered.count < sent.count {
            _ = relay.advance(&io, budget: 16)
            kernel.peerReads(.client, upTo: 64 << 20, readiness: &relay.readiness)
        }
        let intact = kernel.client.delivered == sent
        #expect(intact)
        #expect(kernel.pipeGrowths == 0)
        #expect(kernel.pipeCapacityInUse <= 16 << 10)
        #expect(relay.serverToClient.earnedPipeCapacity > 16 << 10)
    }

    /// A request/response exchange is copied through the shared buffer: no pipe and no buffer is held between
    /// exchanges.
    @Test func relay_whenExchangesAreSmall_holdsNothingBetweenThem() {
        let kernel = SimulatedKernel(seed: 17)
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        for round in 0..<100 {
            kernel.peerSends(.client, Array(repeating: UInt8(round), count: 200), readiness: &relay.readiness)
            _ = relay.advance(&io, budget: 16)
            kernel.peerReads(.server, upTo: 1000, readiness: &relay.readiness)
            kernel.peerSends(.server, Array(repeating: UInt8(round), count: 900), readiness: &relay.readiness)
            _ = relay.advance(&io, budget: 16)
            kernel.peerReads(.client, upTo: 1000, readiness: &relay.readiness)
            #expect(!relay.holdsResources)
        }
        #expect(kernel.server.delivered.count == 20_000 && kernel.client.delivered.count == 90_000)
        // Small exchanges cost no setsockopt(2).
        #expect(kernel.client.unsentLimit == nil && kernel.server.unsentLimit == nil)
    }

    /// A response that arrives whole, below `Direction.bulkReceive` (32 KiB), goes through in one receive and one
    /// send, without a pipe: a 16 KiB body with its headers (16,640 bytes) filled the 16 KiB receive of earlier
    /// builds, took two receives and a send each, and started splicing for its last 256 bytes. A receive of a whole
    /// loopback segment (65,483 bytes) is bulk data and starts splicing.
    @Test func relay_whenAResponseFitsOneReceive_itIsCopiedWithoutAPipe() {
        let kernel = SimulatedKernel(seed: 29, copyChunk: RelayOptions().copyChunk)
        kernel.client.window = 10_000_000
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        let rounds = 50
        for size in [16_640, 24_000, 32_000] {
            let receivesBefore = kernel.server.receives
            for round in 0..<rounds {
                kernel.peerSends(.client, Array(repeating: UInt8(round), count: 100), readiness: &relay.readiness)
                _ = relay.advance(&io, budget: 16)
                kernel.peerReads(.server, upTo: 1000, readiness: &relay.readiness)
                kernel.peerSends(.server, Array(repeating: UInt8(round), count: size), readiness: &relay.readiness)
                _ = relay.advance(&io, budget: 16)
                kernel.peerReads(.client, upTo: size, readiness: &relay.readiness)
            }
            #expect(kernel.server.receives - receivesBefore == rounds, "\(size)-byte responses")
        }
        #expect(kernel.pipesAcquired == 0)
        #expect(kernel.client.delivered.count == rounds * (16_640 + 24_000 + 32_000))
        kernel.peerSends(.server, Array(repeating: 7, count: 65_483), readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        #expect(kernel.pipesAcquired == 1)
    }

    /// `--splice no` (`copyOnly`): bulk data both ways, and a destination that falls behind, take no pipe; every byte
    /// arrives in order, and a reader that stops is held to a starting pipe's unsent limit.
    @Test func relay_copyOnly_movesBulkDataWithoutAPipe() {
        let kernel = SimulatedKernel(seed: 37, copyChunk: RelayOptions().copyChunk)
        kernel.client.window = 200_000
        kernel.server.window = 200_000
        var relay = RelayState.connected()
        relay.serverIsOnThisMachine()
        relay.copyOnly()
        var io = SimulatedKernel.IO(kernel: kernel)
        let download = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let upload = (0..<1_000_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        // The first bulk receive, which the client takes whole: the server is on this machine, so its receive
        // buffer is bounded now, as a splicing direction's would be when it starts.
        kernel.peerSends(.server, Array(download[0..<65_483]), readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        kernel.peerReads(.client, upTo: 65_483, readiness: &relay.readiness)
        #expect(kernel.client.delivered.count == 65_483)
        #expect(kernel.server.receiveBuffer == Direction.receiveBuffer(forPipe: io.startingPipe))
        var sentDown = 65_483
        var sentUp = 0
        for _ in 0..<10_000 where kernel.client.delivered.count < download.count {
            if sentDown < download.count {
                let next = min(download.count, sentDown + 65_483)
                kernel.peerSends(.server, Array(download[sentDown..<next]), readiness: &relay.readiness)
                sentDown = next
            }
            if sentUp < upload.count {
                let next = min(upload.count, sentUp + 65_483)
                kernel.peerSends(.client, Array(upload[sentUp..<next]), readiness: &relay.readiness)
                sentUp = next
            }
            _ = relay.advance(&io, budget: 16)
            kernel.peerReads(.client, upTo: 40_000, readiness: &relay.readiness)
            kernel.peerReads(.server, upTo: 40_000, readiness: &relay.readiness)
            _ = relay.advance(&io, budget: 16)
        }
        #expect(kernel.pipesAcquired == 0)
        #expect(kernel.client.delivered == download)
        #expect(kernel.server.delivered.count <= upload.count)
        #expect(kernel.server.delivered == Array(upload[0..<kernel.server.delivered.count]))
        #expect(kernel.client.unsentLimit == Direction.unsentPerPipe * io.startingPipe)
        #expect(kernel.server.receiveBufferChanges == 1)
    }

    /// When the destination takes only part of a receive, the direction holds the rest in a buffer of the rest's
    /// size, not of a whole receive's: a client that stops reading in the middle of a response pins what it did not
    /// take, and every byte arrives once it reads again.
    @Test func relay_whenTheDestinationTakesPartOfAReceive_onlyTheRestIsHeld() {
        let kernel = SimulatedKernel(seed: 31, pipeCapacity: 16 << 10, copyChunk: 64 << 10)
        kernel.client.window = 10_000
        var relay = RelayState.connected()
        relay.serverIsOnThisMachine()
        var io = SimulatedKernel.IO(kernel: kernel)
        let response = (0..<60_000).map { UInt8(truncatingIfNeeded: $0) }
        kernel.peerSends(.server, response, readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        #expect(kernel.buffersInUse == 1)
        #expect(kernel.bufferBytesInUse == 50_000)
        // The receive was more than a small exchange: the client's socket got the unsent limit of a starting pipe
        // before the send, as splicing would have given it.
        #expect(kernel.client.unsentLimit == Direction.unsentPerPipe * kernel.pipeCapacity)
        // The reader may have stopped: the server, on this machine, has its receive buffer bounded as a starting pipe
        // would bound it, and once for the whole exchange.
        #expect(kernel.server.receiveBuffer == Direction.receiveBuffer(forPipe: kernel.pipeCapacity))
        for _ in 0..<100 where kernel.client.delivered.count < response.count {
            kernel.peerReads(.client, upTo: 10_000, readiness: &relay.readiness)
            _ = relay.advance(&io, budget: 16)
        }
        kernel.peerReads(.client, upTo: 10_000, readiness: &relay.readiness)
        #expect(kernel.client.delivered == response)
        #expect(kernel.bufferBytesInUse == 0)
        #expect(kernel.server.receiveBufferChanges == 1)
    }

    /// Bulk data switches a direction to splice, and the pipe goes back once the source is quiet.
    @Test func relay_whenBulkDataEnds_pipeIsGivenBack() {
        let kernel = SimulatedKernel(seed: 19, pipeCapacity: 1 << 20)
        kernel.client.window = 10_000_000
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        kernel.peerSends(.server, Array(repeating: 5, count: 3_000_000), readiness: &relay.readiness)
        var sawPipe = false
        for _ in 0..<1000 {
            _ = relay.advance(&io, budget: 16)
            if kernel.pipesInUse > 0 { sawPipe = true }
            kernel.peerReads(.client, upTo: 1_000_000, readiness: &relay.readiness)
            if kernel.client.delivered.count == 3_000_000 { break }
        }
        #expect(sawPipe)
        #expect(kernel.client.delivered.count == 3_000_000)
        // A small message after the bulk: the pipe is released once the source is found empty and quiet.
        kernel.peerSends(.server, [1, 2, 3], readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        kernel.peerSends(.server, [4], readiness: &relay.readiness)
        _ = relay.advance(&io, budget: 16)
        #expect(kernel.pipesInUse == 0)
    }

    @Test func relay_whenTheEndArrivesWithTheLastBytes_theyGoOutWithTheFIN() {
        let kernel = SimulatedKernel(seed: 23)
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        // A response and the server's FIN, both queued before the relay's turn: one receive (a short one, after the
        // FIN was reported, empties the socket up to the FIN), one send that says the end follows, then the
        // shutdown, in the same turn.
        kernel.peerSends(.server, Array(repeating: 7, count: 600), readiness: &relay.readiness)
        kernel.peerEnds(.server, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .waiting)
        #expect(kernel.server.receives == 1)
        #expect(kernel.client.sendsBeforeEnd == 1)
        #expect(kernel.client.shutdownCount == 1 && !kernel.client.heldForEnd)
        #expect(kernel.client.received == Array(repeating: 7, count: 600))

        // Bytes whose end is not known yet go out at once.
        kernel.peerSends(.client, Array(repeating: 8, count: 300), readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .waiting)
        #expect(kernel.server.sendsBeforeEnd == 0 && kernel.server.received.count == 300)
        // The client's end is the connection's last: the close that follows sends the server its FIN, with no
        // shutdown call.
        kernel.peerEnds(.client, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .finished)
        #expect(kernel.server.shutdownCount == 0 && kernel.server.sendsBeforeEnd == 0)
        kernel.closeFinishedConnection()
        #expect(kernel.server.finsReceived == 1 && kernel.client.finsReceived == 1)
    }

    @Test func relay_whenAnErrorWasReportedWithTheHangUp_readingGoesOnUntilRecvSaysHowItEnded() {
        let kernel = SimulatedKernel(seed: 31)
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        // EPOLLERR with the hang-up: it may be a reset rather than a FIN, so the short receive does not end the
        // stream, and its bytes go out at once rather than held for a FIN (a reset would discard them); the next
        // receive says how it ended (here the end of stream).
        kernel.peerSends(.server, Array(repeating: 5, count: 600), readiness: &relay.readiness)
        kernel.peerEnds(.server, readiness: &relay.readiness)
        relay.readiness[.server].failed = true
        #expect(relay.advance(&io, budget: 16) == .waiting)
        #expect(kernel.server.receives == 2)
        #expect(kernel.client.sendsBeforeEnd == 0)
        #expect(kernel.client.received.count == 600 && kernel.client.shutdownCount == 1)
    }

    @Test func relay_whenTheClientSendsUrgentDataThenItsFIN_everyByteArrivesInOrder() {
        let kernel = SimulatedKernel(seed: 37)
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        // "abc", an urgent "!", "def", and the FIN, all queued: the receive stops short before the urgent byte, and
        // that short receive neither empties the socket nor ends the stream.
        kernel.peerSendsUrgent(.client, Array("abc!def".utf8), urgentIndex: 3, readiness: &relay.readiness)
        kernel.peerEnds(.client, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .waiting)
        #expect(kernel.server.received == Array("abc!def".utf8))
        #expect(kernel.server.urgentSent == [3])
        #expect(kernel.server.shutdownCount == 1)
        kernel.peerEnds(.server, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .finished)
        kernel.closeFinishedConnection()
        #expect(kernel.client.finsReceived == 1)
    }

    @Test func relay_whenTheDestinationIsFull_theUrgentByteWaitsAndKeepsItsMark() {
        let kernel = SimulatedKernel(seed: 43)
        kernel.server.window = 3
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        kernel.peerSendsUrgent(.client, Array("abc!def".utf8), urgentIndex: 3, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .waiting)
        #expect(kernel.server.received == Array("abc".utf8))
        for _ in 0..<10 where kernel.server.received.count < 7 {
            kernel.peerReads(.server, upTo: 3, readiness: &relay.readiness)
            _ = relay.advance(&io, budget: 16)
        }
        #expect(kernel.server.received == Array("abc!def".utf8))
        #expect(kernel.server.urgentSent == [3])
        #expect(relay.bytes.up == 7)
    }

    @Test func relay_whenUrgentDataComesDuringBulk_theDirectionCopiesPastIt() {
        let kernel = SimulatedKernel(seed: 41)
        var relay = RelayState.connected()
        var io = SimulatedKernel.IO(kernel: kernel)
        var random = SeededRandom(seed: 41)
        let bulk = randomBytes(2_000_000, &random)
        kernel.peerSends(.server, bulk, readiness: &relay.readiness)
        var sawPipe = false
        for _ in 0..<1000 where kernel.client.delivered.count < bulk.count {
            _ = relay.advance(&io, budget: 16)
            if kernel.pipesInUse > 0 { sawPipe = true }
            kernel.peerReads(.client, upTo: 1_000_000, readiness: &relay.readiness)
        }
        #expect(sawPipe)
        // Splice would stop at the urgent byte for good; the direction leaves its pipe and copies.
        let tail = randomBytes(100_000, &random)
        kernel.peerSendsUrgent(.server, tail, urgentIndex: 40_000, readiness: &relay.readiness)
        for _ in 0..<1000 where kernel.client.delivered.count < bulk.count + tail.count {
            _ = relay.advance(&io, budget: 16)
            kernel.peerReads(.client, upTo: 1_000_000, readiness: &relay.readiness)
        }
        let intact = kernel.client.delivered == bulk + tail
        #expect(intact)
        #expect(kernel.client.urgentSent == [bulk.count + 40_000])
        #expect(kernel.pipesInUse == 0)
    }

    @Test func relay_whenFirstBytesAreHeld_theServerGetsHeaderThenThemThenTheRest() {
        let kernel = SimulatedKernel(seed: 29)
        var relay = RelayState()
        var io = SimulatedKernel.IO(kernel: kernel)
        // As at accept: a PROXY header and the bytes the client sent with its handshake, before the connect ends.
        let header: [UInt8] = Array("PROXY TCP6 ::1 ::1 40000 8080\r\n".utf8)
        let first: [UInt8] = Array(repeating: 9, count: 500)
        first.withUnsafeBytes { relay.sendFirst(header: header, received: $0, &io) }
        #expect(kernel.buffersInUse == 1)
        relay.readiness.client.writable = true
        relay.readiness.server.writable = true
        kernel.peerSends(.client, Array(repeating: 10, count: 300), readiness: &relay.readiness)
        kernel.peerEnds(.client, readiness: &relay.readiness)
        #expect(relay.advance(&io, budget: 16) == .waiting)
        #expect(kernel.server.received == header + first + Array(repeating: 10, count: 300))
        #expect(kernel.server.shutdownCount == 1)
        // The header is not the client's: only the client's bytes count as relayed.
        #expect(relay.bytes.up == 800)
        #expect(kernel.buffersInUse == 0)
    }
}

extension RelayState {
    /// A relay as the connect leaves it: both sockets have room to write.
    static func connected() -> RelayState {
        var relay = RelayState()
        relay.readiness.client.writable = true
        relay.readiness.server.writable = true
        return relay
    }
}
