import TCPCrossover
import TestSupport
import Testing

/// The names under which a stopping process stores its connections in systemd's file descriptor store, and the
/// relay snapshot they carry.
@Suite struct StoredConnectionTests {
    func randomDirection(_ random: inout SeededRandom) -> Direction.Snapshot {
        let finished = Int.random(in: 0..<3, using: &random) == 0
        return Direction.Snapshot(
            bytes: [0, 1, UInt64.max, UInt64.random(in: 0...UInt64.max, using: &random)].randomElement(using: &random)!,
            sourceEnded: finished || Bool.random(using: &random), finished: finished,
            copiesOnly: Bool.random(using: &random),
            pipeBytes: finished || Bool.random(using: &random) ? 0 : Int.random(in: 1...(1 << 20), using: &random))
    }

    /// A pipe for each direction whose snapshot says it holds bytes.
    func pipes(for snapshot: RelayState.Snapshot) -> (PipeHandle?, PipeHandle?) {
        let pipe = PipeHandle(readEnd: 100, writeEnd: 101, capacity: 1 << 20)
        return (
            snapshot.clientToServer.pipeBytes > 0 ? pipe : nil, snapshot.serverToClient.pipeBytes > 0 ? pipe : nil
        )
    }

    func randomConnection(_ random: inout SeededRandom) -> StoredConnection {
        StoredConnection(
            id: "\(Int.random(in: 1...4_194_304, using: &random))-\(Int.random(in: 0...Int.max, using: &random))",
            service: Int.random(in: 0...1000, using: &random),
            startedAt: Int64.random(in: 0...Int64.max, using: &random),
            relay: RelayState.Snapshot(
                clientToServer: randomDirection(&random), serverToClient: randomDirection(&random),
                firstToEnd: [nil, Side.client, .server].randomElement(using: &random)!))
    }

    @Test func snapshot_restoredThenTakenAgain_isTheSame() {
        var random = SeededRandom(seed: 17)
        for _ in 0..<2000 {
            let snapshot = randomConnection(&random).relay
            let (upstream, downstream) = pipes(for: snapshot)
            let relay = RelayState(restoring: snapshot, upstreamPipe: upstream, downstreamPipe: downstream)
            #expect(relay.snapshot == snapshot)
            #expect(relay.bytes.up == snapshot.clientToServer.bytes)
            #expect(relay.bytes.down == snapshot.serverToClient.bytes)
            #expect(relay.firstToEnd == snapshot.firstToEnd)
            #expect(relay.clientToServer.finished == snapshot.clientToServer.finished)
            #expect(relay.holdsResources == (upstream != nil || downstream != nil))
        }
    }

    @Test func names_parsedBack_giveTheSameConnection() {
        var random = SeededRandom(seed: 23)
        for _ in 0..<2000 {
            let connection = randomConnection(&random)
            #expect(StoredConnection.parse(connection.clientName) == .client(connection))
            #expect(StoredConnection.parse(connection.serverName) == .server(id: connection.id))
            let pipeNames = [Side.client, .server].flatMap { source in
                [false, true].map { writeEnd in
                    let name = connection.pipeName(source: source, writeEnd: writeEnd)
                    #expect(
                        StoredConnection.parse(name) == .pipe(id: connection.id, source: source, writeEnd: writeEnd))
                    return name
                }
            }
            for name in [connection.clientName, connection.serverName] + pipeNames {
                // systemd's rules for FDNAME=: at most 255 printable ASCII characters, no ':'.
                #expect(name.utf8.count <= 255, "\(name)")
                #expect(name.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") }, "\(name)")
                #expect(StoredConnection.isStoredName(name))
            }
        }
    }

    @Test func names_ofOtherDescriptorsOrDamaged_areNotConnections() {
        let good = StoredConnection(
            id: "42-7", service: 1, startedAt: 5000,
            relay: RelayState.Snapshot(
                clientToServer: Direction.Snapshot(bytes: 10, sourceEnded: true, finished: true, copiesOnly: false),
                serverToClient: Direction.Snapshot(
                    bytes: 20, sourceEnded: false, finished: false, copiesOnly: true, pipeBytes: 300),
                firstToEnd: .client))
        #expect(good.clientName == "tcx-c.42-7.1.5000.10.ef.0.20.c.300.c")
        #expect(good.serverName == "tcx-s.42-7")
        #expect(good.pipeName(source: .server, writeEnd: false) == "tcx-pr.42-7.s")
        for name in [
            "smtp", "metrics", "tcx-", "tcx-s.", "tcx-s.42.7", "tcx-x.42-7", "tcx-c.42-7.1.5000.10.ef.0.20.c.300",
            "tcx-c.42-7.1.5000.10.ef.0.20.c.300.c.x", "tcx-c.42-7.-1.5000.10.ef.0.20.c.300.c",
            "tcx-c.42-7.1.5000.10.f.0.20.c.300.c", "tcx-c.42-7.1.5000.10.ex.0.20.c.300.c",
            "tcx-c.42-7.1.5000.10..0.20.c.300.c", "tcx-c.42-7.1.5000.1x.ef.0.20.c.300.c",
            "tcx-c.42-7.1.5000.10.ef.0.20.c.300.x", "tcx-c.4 2.1.5000.10.ef.0.20.c.300.c",
            "tcx-c.42-7.1.5000.10.ef.5.20.c.300.c", "tcx-c.42-7.1.5000.10.ef.0.20.c.-3.c", "tcx-pr.42-7.x",
            "tcx-pw.42-7", "tcx-px.42-7.c",
        ] {
            #expect(StoredConnection.parse(name) == nil, "\(name)")
        }
    }
}

/// The pairing of the stored descriptors that a new process finds beside its listeners.
@Suite struct AdoptedConnectionTests {
    func stored(_ id: String, service: Int = 0) -> StoredConnection {
        let direction = Direction.Snapshot(bytes: 5, sourceEnded: false, finished: false, copiesOnly: false)
        return StoredConnection(
            id: id, service: service, startedAt: 1,
            relay: RelayState.Snapshot(clientToServer: direction, serverToClient: direction, firstToEnd: nil))
    }

    @Test func pair_matchesEachClientWithItsServer_inAnyOrder() {
        let first = stored("1-1")
        let second = stored("1-2", service: 3)
        let (connections, unpaired) = AdoptedConnection.pair([
            (10, second.serverName), (11, first.clientName), (12, first.serverName), (13, second.clientName),
        ])
        #expect(unpaired.isEmpty)
        #expect(connections.map(\.client) == [11, 13])
        #expect(connections.map(\.server) == [12, 10])
        #expect(connections.map(\.stored) == [first, second])
    }

    @Test func pair_takesThePipesThatHoldBytes_andOnlyThose() {
        let up = Direction.Snapshot(bytes: 5, sourceEnded: false, finished: false, copiesOnly: false, pipeBytes: 700)
        let down = Direction.Snapshot(bytes: 9, sourceEnded: false, finished: false, copiesOnly: false)
        let withPipe = StoredConnection(
            id: "3-1", service: 0, startedAt: 1,
            relay: RelayState.Snapshot(clientToServer: up, serverToClient: down, firstToEnd: nil))
        let pipeLost = StoredConnection(
            id: "3-2", service: 0, startedAt: 1,
            relay: RelayState.Snapshot(clientToServer: up, serverToClient: down, firstToEnd: nil))
        let (connections, unpaired) = AdoptedConnection.pair([
            (30, withPipe.clientName), (31, withPipe.serverName),
            (32, withPipe.pipeName(source: .client, writeEnd: false)),
            (33, withPipe.pipeName(source: .client, writeEnd: true)),
            // A pipe its connection does not say holds bytes.
            (34, withPipe.pipeName(source: .server, writeEnd: false)),
            // A connection whose pipe lost its write end: nothing of it can be relayed.
            (40, pipeLost.clientName), (41, pipeLost.serverName),
            (42, pipeLost.pipeName(source: .client, writeEnd: false)),
        ])
        #expect(connections.count == 1)
        #expect(connections.first?.upstreamPipe.map { [$0.read, $0.write] } == [32, 33])
        #expect(connections.first?.downstreamPipe == nil)
        #expect(connections.first?.descriptors == [30, 31, 32, 33])
        #expect(unpaired.sorted() == [34, 40, 41, 42])
    }

    @Test func pair_leavesOrphansDuplicatesAndDamagedNamesUnpaired() {
        let whole = stored("7-1")
        let clientOnly = stored("7-2")
        let (connections, unpaired) = AdoptedConnection.pair([
            (20, whole.clientName), (21, whole.serverName), (22, clientOnly.clientName), (23, "tcx-s.7-3"),
            (24, "tcx-c.garbage"), (25, whole.serverName),
        ])
        #expect(connections.map(\.client) == [20])
        #expect(connections.map(\.server) == [21])
        #expect(unpaired.sorted() == [22, 23, 24, 25])
    }
}
