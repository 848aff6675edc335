import TCPCrossover
import Testing

/// `--max-connections-per-client`: which block a client is in, the counting, and the episodes of refusals.
@Suite struct ClientLimitsTests {
    func address(_ text: String, port: UInt16 = 40000, scopeID: UInt32 = 0) throws -> SocketAddress {
        let host = try #require(SocketAddress(numericHost: text), "\(text)")
        return SocketAddress(family: host.family, bytes: host.bytes, port: port, scopeID: scopeID)
    }

    func prefixes(_ ipv4: Int, _ ipv6: Int) throws -> ClientPrefixes {
        try #require(ClientPrefixes(ipv4: ipv4, ipv6: ipv6))
    }

    // MARK: blocks

    @Test func ipv4_byDefault_eachAddressIsOneClient() throws {
        let standard = ClientPrefixes.standard
        let block = standard.block(of: try address("192.0.2.7", port: 1))
        #expect(block == standard.block(of: try address("192.0.2.7", port: 2)))
        #expect(block != standard.block(of: try address("192.0.2.8")))
        #expect(block.description == "192.0.2.7/32")
    }

    @Test func ipv4_withAShorterPrefix_countsTheWholeBlockAsOneClient() throws {
        let slash24 = try prefixes(24, 64)
        let block = slash24.block(of: try address("192.0.2.7"))
        #expect(block == slash24.block(of: try address("192.0.2.200")))
        #expect(block != slash24.block(of: try address("192.0.3.7")))
        #expect(block.description == "192.0.2.0/24")
        let odd = try prefixes(21, 64).block(of: try address("198.51.100.77"))
        #expect(odd.description == "198.51.96.0/21")
    }

    @Test func ipv6_byDefault_aSlash64IsOneClient() throws {
        let standard = ClientPrefixes.standard
        let block = standard.block(of: try address("2001:db8:1:2::1"))
        #expect(block == standard.block(of: try address("2001:db8:1:2:ffff:ffff:ffff:ffff")))
        #expect(block != standard.block(of: try address("2001:db8:1:3::1")))
        #expect(block.description == "2001:db8:1:2::/64")
    }

    @Test func ipv6_withASlash56_countsItsSlash64sTogether() throws {
        let slash56 = try prefixes(32, 56)
        let block = slash56.block(of: try address("2001:db8:1:2::1"))
        #expect(block == slash56.block(of: try address("2001:db8:1:ff::9")))
        #expect(block != slash56.block(of: try address("2001:db8:1:100::1")))
        #expect(block.description == "2001:db8:1::/56")
        #expect(try prefixes(32, 128).block(of: try address("2001:db8::5")).description == "2001:db8::5/128")
    }

    @Test func mappedIPv4_isCountedAsIPv4() throws {
        for chosen in [ClientPrefixes.standard, try prefixes(24, 56)] {
            let mapped = chosen.block(of: try address("::ffff:192.0.2.7"))
            #expect(mapped == chosen.block(of: try address("192.0.2.7")))
            #expect(mapped.family == .ipv4)
        }
        #expect(ClientPrefixes.standard.block(of: try address("::ffff:192.0.2.7")).description == "192.0.2.7/32")
        // Not IPv4-mapped: an ordinary IPv6 address whose last bytes look like one.
        #expect(ClientPrefixes.standard.block(of: try address("64:ff9b::192.0.2.7")).family == .ipv6)
    }

    @Test func linkLocal_keepsItsScope_otherAddressesDoNot() throws {
        let standard = ClientPrefixes.standard
        let onLink1 = standard.block(of: try address("fe80::1", scopeID: 1))
        #expect(onLink1 == standard.block(of: try address("fe80::2:3", scopeID: 1)))
        #expect(onLink1 != standard.block(of: try address("fe80::1", scopeID: 2)))
        #expect(onLink1.scopeID == 1)
        // Interface 1 is the loopback interface, named lo on Linux.
        #expect(onLink1.description == "fe80::%lo/64")
        let global = standard.block(of: try address("2001:db8::1", scopeID: 7))
        #expect(global == standard.block(of: try address("2001:db8::2")))
        #expect(global.scopeID == 0)
    }

    @Test func prefixLengths_outOfRange_areRefused() {
        #expect(ClientPrefixes(ipv4: 0, ipv6: 64) == nil)
        #expect(ClientPrefixes(ipv4: 33, ipv6: 64) == nil)
        #expect(ClientPrefixes(ipv4: 32, ipv6: 0) == nil)
        #expect(ClientPrefixes(ipv4: 32, ipv6: 129) == nil)
        #expect(ClientPrefixes(ipv4: 1, ipv6: 128) != nil)
    }

    // MARK: counting

    @Test func counting_refusesABlockAtItsLimit_andOnlyThatBlock() throws {
        var table = ClientConnectionTable(limit: 2, prefixes: .standard)
        let first = try address("2001:db8:1::1")
        let neighbour = try address("2001:db8:1::2")
        let other = try address("2001:db8:2::1")
        let block = ClientPrefixes.standard.block(of: first)
        #expect(table.admit(first, now: 0) == .admitted(block))
        #expect(table.admit(neighbour, now: 0) == .admitted(block))
        #expect(table.admit(first, now: 1) == .refused(block, .limit(2), episodeStarted: true))
        #expect(table.admit(neighbour, now: 2) == .refused(block, .limit(2), episodeStarted: false))
        #expect(table.admit(other, now: 2) == .admitted(ClientPrefixes.standard.block(of: other)))
        #expect(table.openConnections(of: block) == 2)
        // A connection ends: the block may have one more, and no more.
        _ = table.release(block, now: 0)
        #expect(table.openConnections(of: block) == 1)
        #expect(table.admit(first, now: 3) == .admitted(block))
        #expect(table.admit(first, now: 3) == .refused(block, .limit(2), episodeStarted: false))
    }

    @Test func counting_forgetsABlockOnceItsLastConnectionEnds() throws {
        var table = ClientConnectionTable(limit: 3, prefixes: .standard)
        let client = try address("192.0.2.1")
        var blocks: [ClientBlock] = []
        for _ in 0..<3 {
            guard case .admitted(let block) = table.admit(client, now: 0) else {
                Issue.record("refused under the limit")
                return
            }
            blocks.append(block)
        }
        #expect(table.blockCount == 1)
        for block in blocks { #expect(table.release(block, now: 0) == nil) }
        #expect(table.blockCount == 0)
        #expect(table.endQuietEpisodes(now: 100_000).isEmpty)
    }

    // MARK: episodes

    @Test func episode_endsAfterTheQuietPeriod_withTheCountOfRefusals() throws {
        var table = ClientConnectionTable(limit: 1, prefixes: .standard, quietPeriod: 10_000)
        let client = try address("2001:db8:1:2::7")
        guard case .admitted(let block) = table.admit(client, now: 0) else {
            Issue.record("refused under the limit")
            return
        }
        #expect(table.admit(client, now: 1_000) == .refused(block, .limit(1), episodeStarted: true))
        for time in stride(from: Int64(1_100), through: 5_000, by: 100) {
            #expect(table.admit(client, now: time) == .refused(block, .limit(1), episodeStarted: false))
        }
        // 9.9 s after the last refusal: still the same episode.
        #expect(table.endQuietEpisodes(now: 14_999).isEmpty)
        let over = table.endQuietEpisodes(now: 15_000)
        #expect(over.count == 1)
        #expect(over.first?.refused == 41)
        #expect(over.first?.duration == 4_000)
        #expect(
            over.first?.description
                == "client block 2001:db8:1:2::/64: 41 connections refused over its limit of 1 connection in 4.0 s")
        // The block still holds its connection; the next refusal is a new episode.
        #expect(table.admit(client, now: 20_000) == .refused(block, .limit(1), episodeStarted: true))
        #expect(table.endQuietEpisodes(now: 30_000).first?.refused == 1)
        #expect(table.endQuietEpisodes(now: 40_000).isEmpty)
    }

    @Test func episode_ofABlockWhoseConnectionsEnded_isReportedAndTheBlockForgotten() throws {
        var table = ClientConnectionTable(limit: 1, prefixes: .standard, quietPeriod: 10_000)
        let client = try address("192.0.2.9")
        guard case .admitted(let block) = table.admit(client, now: 0) else {
            Issue.record("refused under the limit")
            return
        }
        _ = table.admit(client, now: 500)
        #expect(table.release(block, now: 0) == nil)
        // It lingers until its episode is over, and comes back into the same episode.
        #expect(table.blockCount == 1)
        #expect(table.admit(client, now: 600) == .admitted(block))
        #expect(table.admit(client, now: 700) == .refused(block, .limit(1), episodeStarted: false))
        #expect(table.release(block, now: 0) == nil)
        let over = table.endQuietEpisodes(now: 10_700)
        #expect(over.map(\.refused) == [2])
        #expect(table.blockCount == 0)
    }

    @Test func episodes_ofBlocksWithoutConnections_areBoundedInNumber() throws {
        var table = ClientConnectionTable(limit: 1, prefixes: .standard, maximumLingering: 2)
        var ended: [ClientConnectionTable.EndedEpisode] = []
        for index in 1...5 {
            let client = try address("2001:db8:\(index)::1")
            guard case .admitted(let block) = table.admit(client, now: 0) else {
                Issue.record("refused under the limit")
                return
            }
            _ = table.admit(client, now: 1)
            if let over = table.release(block, now: 0) { ended.append(over) }
        }
        // Two linger until their episode is over; the other three are reported at once.
        #expect(ended.count == 3)
        #expect(ended.allSatisfy { $0.refused == 1 })
        #expect(table.blockCount == 2)
        #expect(table.endQuietEpisodes(now: 0, all: true).count == 2)
        #expect(table.blockCount == 0)
    }

    @Test func stopping_endsEveryEpisode() throws {
        var table = ClientConnectionTable(limit: 1, prefixes: .standard)
        for index in 1...3 {
            let client = try address("192.0.2.\(index)")
            _ = table.admit(client, now: 0)
            _ = table.admit(client, now: 0)
        }
        #expect(table.endQuietEpisodes(now: 1).isEmpty)
        #expect(table.endQuietEpisodes(now: 1, all: true).count == 3)
        #expect(table.blockCount == 3)
    }

    // MARK: rate

    func rate(_ count: Int, per seconds: Int64) throws -> ConnectionRate {
        try #require(ConnectionRate(count: count, period: seconds * 1000))
    }

    @Test func rate_letsABurstThrough_thenOneConnectionPerInterval() throws {
        let threePerSixSeconds = try rate(3, per: 6)
        var table = ClientConnectionTable(limit: nil, rate: threePerSixSeconds, prefixes: .standard)
        let client = try address("2001:db8:5::1")
        let block = ClientPrefixes.standard.block(of: client)
        for _ in 0..<3 { #expect(table.admit(client, now: 1_000) == .admitted(block)) }
        #expect(table.admit(client, now: 1_000) == .refused(block, .rate(threePerSixSeconds), episodeStarted: true))
        // One connection's worth (2 s) comes back at a time.
        #expect(table.admit(client, now: 2_999) == .refused(block, .rate(threePerSixSeconds), episodeStarted: false))
        #expect(table.admit(client, now: 3_000) == .admitted(block))
        #expect(table.admit(client, now: 3_000) == .refused(block, .rate(threePerSixSeconds), episodeStarted: false))
        #expect(table.admit(client, now: 5_000) == .admitted(block))
        // Another block has its own bucket; refusals do not use the bucket up.
        let other = try address("2001:db8:6::1")
        #expect(table.admit(other, now: 5_000) == .admitted(ClientPrefixes.standard.block(of: other)))
        #expect(table.admit(client, now: 7_000) == .admitted(block))
        // After a quiet time as long as the period the whole burst is back, and no more.
        for _ in 0..<3 { #expect(table.admit(client, now: 13_000) == .admitted(block)) }
        #expect(table.admit(client, now: 13_000) != .admitted(block))
        #expect(table.openConnections(of: block) == 9)
    }

    @Test func rate_isKeptForABlockWithoutConnections_untilItsBucketIsFull() throws {
        var table = ClientConnectionTable(limit: nil, rate: try rate(2, per: 10), prefixes: .standard)
        let client = try address("192.0.2.50")
        let block = ClientPrefixes.standard.block(of: client)
        #expect(table.admit(client, now: 0) == .admitted(block))
        #expect(table.admit(client, now: 0) == .admitted(block))
        #expect(table.release(block, now: 100) == nil)
        #expect(table.release(block, now: 100) == nil)
        // No connection open, and still no room: the bucket is remembered.
        #expect(table.blockCount == 1)
        #expect(table.admit(client, now: 200) != .admitted(block))
        #expect(table.endQuietEpisodes(now: 9_999).isEmpty)
        #expect(table.blockCount == 1)
        // Full again 10 s after the two connections, and its episode over 10 s after the refusal.
        #expect(table.endQuietEpisodes(now: 10_200).map(\.overRate) == [1])
        #expect(table.blockCount == 0)
    }

    @Test func limitAndRate_togetherRefuseForTheFirstThatApplies_andTheEpisodeCountsEach() throws {
        let twoPerMinute = try rate(2, per: 60)
        var table = ClientConnectionTable(limit: 1, rate: twoPerMinute, prefixes: .standard)
        let client = try address("198.51.100.4")
        let block = ClientPrefixes.standard.block(of: client)
        #expect(table.admit(client, now: 0) == .admitted(block))
        #expect(table.admit(client, now: 0) == .refused(block, .limit(1), episodeStarted: true))
        #expect(table.release(block, now: 10) == nil)
        #expect(table.admit(client, now: 20) == .admitted(block))
        #expect(table.release(block, now: 30) == nil)
        #expect(table.admit(client, now: 1_040) == .refused(block, .rate(twoPerMinute), episodeStarted: false))
        let over = table.endQuietEpisodes(now: 11_040)
        #expect(over.map(\.refused) == [2])
        #expect(
            over.first?.description
                == "client block 198.51.100.4/32: 2 connections refused (1 over its limit of 1 connection, 1 over its "
                + "rate of 2 new connections per 60 s) in 1.0 s")
        var rateOnly = ClientConnectionTable(limit: nil, rate: twoPerMinute, prefixes: .standard)
        for _ in 0..<3 { _ = rateOnly.admit(client, now: 0) }
        #expect(
            rateOnly.endQuietEpisodes(now: 10_000).first?.description
                == "client block 198.51.100.4/32: 1 connection refused over its rate of 2 new connections per 60 s in "
                + "0.0 s")
    }

    // MARK: figures

    @Test func figures_breakRefusalsDownByReason_whenThereAreAny() {
        var figures = Statistics().snapshot()
        #expect(figures.description == "0 active, 0 accepted, 0 refused, 0 failed connects, 0 B up, 0 B down")
        figures.refusedOverClientLimit = 5
        figures.refusedByAccessRule = 2
        #expect(figures.refused == 7)
        #expect(figures.description.hasPrefix("0 active, 0 accepted, 7 refused (5 per-client limit, 2 access rules),"))
        figures.refusedByAccessRule = 0
        #expect(figures.description.hasPrefix("0 active, 0 accepted, 5 refused (5 per-client limit), 0 failed"))
        figures.refusedOverClientRate = 3
        #expect(
            figures.description.hasPrefix("0 active, 0 accepted, 8 refused (5 per-client limit, 3 per-client rate),"))
    }

    // MARK: options

    @Test func options_turnIntoTheLimitAndThePrefixes() throws {
        let off = try Options(remote: ["127.0.0.1:25"]).configuration()
        #expect(off.relay.service.maximumConnectionsPerClient == nil)
        let standard = try Options(remote: ["127.0.0.1:25"], maxConnectionsPerClient: ["20"]).configuration()
        #expect(standard.relay.service.maximumConnectionsPerClient == 20)
        #expect(standard.relay.service.clientPrefixes == .standard)
        let chosen = try Options(
            remote: ["127.0.0.1:25"], maxConnectionsPerClient: ["5"], clientPrefixLength: ["24,56"]
        )
        .configuration()
        #expect(chosen.relay.service.clientPrefixes == (try prefixes(24, 56)))
        let rated = try Options(
            remote: ["127.0.0.1:25"], maxNewConnectionsPerClient: ["30/60"], clientPrefixLength: ["32,48"]
        )
        .configuration()
        #expect(rated.relay.service.newConnectionRatePerClient == (try rate(30, per: 60)))
        #expect(rated.relay.service.maximumConnectionsPerClient == nil)
        #expect(rated.relay.service.newConnectionRatePerClient?.description == "30 new connections per 60 s")
        let fraction = try Options(remote: ["127.0.0.1:25"], maxNewConnectionsPerClient: ["1/0.5"]).configuration()
        #expect(fraction.relay.service.newConnectionRatePerClient?.description == "1 new connection per 0.5 s")
    }

    static let badValues: [(limit: String?, prefixes: String?, message: String)] = [
        ("0", nil, "--max-connections-per-client '0' is out of range; expected 1 to 10000000"),
        ("many", nil, "--max-connections-per-client 'many' is out of range"),
        ("5", "32", "--client-prefix-length '32' is not valid; expected IPV4,IPV6 prefix lengths"),
        ("5", "33,64", "--client-prefix-length '33,64' is not valid"),
        ("5", "32,0", "--client-prefix-length '32,0' is not valid"),
        ("5", "32,64,1", "--client-prefix-length '32,64,1' is not valid"),
        ("5", "+32,64", "--client-prefix-length '+32,64' is not valid"),
        (nil, "32,64", "--client-prefix-length has no effect without --max-connections-per-client"),
    ]

    @Test(arguments: badValues)
    func options_badValues_sayWhatIsAccepted(limit: String?, prefixes: String?, message: String) {
        let options = Options(
            remote: ["127.0.0.1:25"], maxConnectionsPerClient: limit.map { [$0] } ?? [],
            clientPrefixLength: prefixes.map { [$0] } ?? [])
        #expect {
            _ = try options.configuration()
        } throws: { error in
            "\(error)".hasPrefix(message)
        }
    }

    /// A prefix length without a service name serves the services without one of their own: given where every
    /// service that limits its clients has its own, it would change nothing, and is refused (the fuzz target for
    /// the command line found it accepted).
    @Test func options_unnamedPrefixLengthThatNoServiceUses_isRefused() throws {
        let unused = Options(
            remote: ["smtp=127.0.0.1:25", "127.0.0.1:26"], maxConnectionsPerClient: ["smtp=5"],
            clientPrefixLength: ["24,56", "smtp=16,48"])
        #expect {
            _ = try unused.configuration()
        } throws: { error in
            "\(error)".hasPrefix(
                "--client-prefix-length 24,56 has no effect: each service that limits its clients gives its own")
        }
        // Used: by the unnamed service's own limit, or by a named service that limits clients without a prefix
        // length of its own.
        let byUnnamed = try Options(
            remote: ["smtp=127.0.0.1:25", "127.0.0.1:26"], maxConnectionsPerClient: ["5"],
            clientPrefixLength: ["24,56", "smtp=16,48"]
        ).configuration()
        #expect(byUnnamed.relay.service.clientPrefixes == (try prefixes(24, 56)))
        #expect(byUnnamed.serviceOptions["smtp"]?.clientPrefixes == (try prefixes(16, 48)))
        let byNamed = try Options(
            remote: ["smtp=127.0.0.1:25", "imap=127.0.0.1:143"], maxConnectionsPerClient: ["imap=5", "smtp=3"],
            clientPrefixLength: ["24,56", "smtp=16,48"]
        ).configuration()
        #expect(byNamed.serviceOptions["imap"]?.clientPrefixes == (try prefixes(24, 56)))
    }

    @Test(arguments: ["30", "30/", "/60", "0/60", "30/0", "30/-1", "30/60/1", "1000001/1", "+3/60", "3/86401", "x/1"])
    func options_badRates_sayWhatIsAccepted(rate: String) {
        let options = Options(remote: ["127.0.0.1:25"], maxNewConnectionsPerClient: [rate])
        #expect {
            _ = try options.configuration()
        } throws: { error in
            "\(error)".hasPrefix(
                "--max-new-connections-per-client '\(rate)' is not valid; expected COUNT/SECONDS, 1 to 1000000 "
                    + "connections per 0.001 to 86400 seconds (such as 30/60")
        }
    }
}
