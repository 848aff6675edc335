import TCPCrossover
import Testing

@Suite struct FeatureUnitTests {
    func address(_ text: String) throws -> SocketAddress {
        guard case .address(let address) = try Endpoint(parsing: text).host else {
            throw AddressError(text: text, reason: "")
        }
        return address
    }

    @Test func proxyV1_writesTheTextLine() throws {
        let header = ProxyProtocol.v1.header(
            source: try address("192.0.2.1:51234"), destination: try address("198.51.100.7:25"))
        #expect(String(decoding: header, as: UTF8.self) == "PROXY TCP4 192.0.2.1 198.51.100.7 51234 25\r\n")
        let six = ProxyProtocol.v1.header(
            source: try address("[2001:db8::1]:40000"), destination: try address("[2001:db8::ff]:443"))
        #expect(String(decoding: six, as: UTF8.self) == "PROXY TCP6 2001:db8::1 2001:db8::ff 40000 443\r\n")
    }

    @Test func proxyV1_sendsMappedAddressesAsIPv4AndLeavesZonesOut() throws {
        let mapped = ProxyProtocol.v1.header(
            source: try address("[::ffff:192.0.2.9]:1000"), destination: try address("[::ffff:192.0.2.1]:80"))
        #expect(String(decoding: mapped, as: UTF8.self) == "PROXY TCP4 192.0.2.9 192.0.2.1 1000 80\r\n")
        let zoned = ProxyProtocol.v1.header(
            source: try address("[fe80::1%lo]:22"), destination: try address("[fe80::2%lo]:22"))
        #expect(String(decoding: zoned, as: UTF8.self) == "PROXY TCP6 fe80::1 fe80::2 22 22\r\n")
    }

    @Test func proxyV2_writesTheBinaryBlock() throws {
        let header = ProxyProtocol.v2.header(
            source: try address("192.0.2.1:51234"), destination: try address("198.51.100.7:25"))
        let expected: [UInt8] =
            [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0C]
            + [192, 0, 2, 1, 198, 51, 100, 7, 0xC8, 0x22, 0x00, 0x19]
        #expect(header == expected)
        let six = ProxyProtocol.v2.header(source: try address("[2001:db8::1]:1"), destination: try address("[::1]:2"))
        #expect(six.count == 16 + 36)
        #expect(Array(six[12..<16]) == [0x21, 0x21, 0x00, 0x24])
        #expect(Array(six[16..<32]) == [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1])
        #expect(Array(six[48..<52]) == [0, 1, 0, 2])
    }

    @Test func proxyHeader_withDifferentFamilies_saysUnknownOrLocal() throws {
        let v4 = try address("192.0.2.1:1")
        let v6 = try address("[2001:db8::1]:2")
        #expect(
            String(decoding: ProxyProtocol.v1.header(source: v4, destination: v6), as: UTF8.self) == "PROXY UNKNOWN\r\n"
        )
        #expect(Array(ProxyProtocol.v2.header(source: v4, destination: v6)[12...]) == [0x20, 0x00, 0x00, 0x00])
    }

    @Test func addressRange_matchesItsBlockOnly() throws {
        let block = try AddressRange(parsing: "192.0.2.0/24")
        #expect(block.contains(try address("192.0.2.200:1")))
        #expect(!block.contains(try address("192.0.3.1:1")))
        #expect(block.contains(try address("[::ffff:192.0.2.5]:1")))
        #expect(!block.contains(try address("[2001:db8::1]:1")))
        let six = try AddressRange(parsing: "2001:db8::/32")
        #expect(six.contains(try address("[2001:db8:ffff::1]:1")))
        #expect(!six.contains(try address("[2001:db9::1]:1")))
        #expect(try AddressRange(parsing: "10.1.2.3").description == "10.1.2.3/32")
        #expect(try AddressRange(parsing: "10.1.2.3/8").description == "10.0.0.0/8")
        #expect(try AddressRange(parsing: "0.0.0.0/0").contains(try address("203.0.113.9:1")))
        #expect(try AddressRange(parsing: "2001:db8::7/127").contains(try address("[2001:db8::6]:1")))
    }

    /// An IPv4 client is one client whether it arrives as IPv4 or IPv4-mapped IPv6, and whether the block is
    /// written in one form or the other (the fuzzer found `::ffff:1:4` matching nothing).
    @Test func addressRange_matchesIPv4ClientsInEitherForm() throws {
        let mappedBlock = try AddressRange(parsing: "::ffff:127.0.0.1")
        #expect(mappedBlock.contains(try address("127.0.0.1:9")))
        #expect(mappedBlock.contains(try address("[::ffff:127.0.0.1]:9")))
        #expect(!mappedBlock.contains(try address("127.0.0.2:9")))
        let everyIPv4 = try AddressRange(parsing: "::ffff:0:0/96")
        #expect(everyIPv4.contains(try address("203.0.113.5:1")))
        #expect(!everyIPv4.contains(try address("[2001:db8::5]:1")))
        let plain = try AddressRange(parsing: "127.0.0.0/8")
        #expect(plain.contains(try address("[::ffff:127.9.9.9]:1")))
        #expect(!plain.contains(try address("[::1]:1")))
        let odd = try AddressRange(parsing: "::ffff:1:4")
        #expect(odd.contains(try address("[::ffff:1:4]:1")))
    }

    @Test(arguments: [
        "", "10.0.0.0/", "10.0.0.0/33", "10.0.0.1\u{0}junk", " 10.0.0.1", "::/129", "10.0.0.0/-1", "10.0.0.0/a",
        "host/8", "10.0.0.0/08x",
    ])
    func addressRange_whenMalformed_isRefused(text: String) {
        #expect(throws: AddressError.self) { try AddressRange(parsing: text) }
    }

    @Test func accessRules_denyWinsAndAllowLimits() throws {
        let rules = AccessRules(
            allow: [try AddressRange(parsing: "192.0.2.0/24")], deny: [try AddressRange(parsing: "192.0.2.66/32")])
        #expect(rules.refusal(of: try address("192.0.2.1:9")) == nil)
        #expect(rules.refusal(of: try address("192.0.2.66:9")) == "by --deny 192.0.2.66/32")
        #expect(rules.refusal(of: try address("198.51.100.1:9")) == "not in any --allow")
        #expect(AccessRules().refusal(of: try address("198.51.100.1:9")) == nil)
    }

    @Test func remotePool_putsFailedAddressesLastUntilTheirBackoffEnds() throws {
        let a = try address("127.0.0.1:1")
        let b = try address("127.0.0.1:2")
        let c = try address("127.0.0.1:3")
        let pool = RemotePool(addresses: [a, b, c], backoff: 1000)
        #expect(pool.candidates(now: 0).map(\.address) == [a, b, c])
        pool.failed(a, now: 0)
        #expect(pool.candidates(now: 10).map(\.address) == [b, c, a])
        pool.failed(b, now: 10)
        #expect(pool.candidates(now: 20).map(\.address) == [c, a, b])
        pool.succeeded(a)
        #expect(pool.candidates(now: 30).map(\.address) == [a, c, b])
        #expect(pool.candidates(now: 1011).map(\.address) == [a, b, c])
    }

    /// A new lookup: an endpoint whose lookup fails keeps its last addresses (issue 16, bug 2); with `--source`,
    /// only addresses of a source's family are taken, at start as at every new lookup (bug 1); back-offs stay with
    /// the addresses that remain.
    @Test func remotePool_refreshKeepsAFailedEndpointsAddressesAndOnlySourceFamilies() throws {
        let name = Endpoint(host: .name("both.test"), port: 25)
        let backup = try address("127.0.0.9:25")
        let v4 = try address("127.0.0.2:25")
        let v4Later = try address("127.0.0.3:25")
        let v6 = try address("[::1]:25")
        var answer: Result<[SocketAddress], ResolutionError> = .success([v6, v4])
        let pool = RemotePool(
            endpoints: [name, Endpoint(host: .address(backup), port: 25)], sources: [try address("127.0.0.1:1")],
            backoff: 1000)
        let resolve: (Endpoint) -> Result<[SocketAddress], ResolutionError> = { endpoint in
            endpoint == name ? answer : endpoint.resolve()
        }
        var refresh = pool.refresh(resolve: resolve)
        #expect(refresh.changed && refresh.problems.isEmpty)
        #expect(pool.addresses == [v4, backup])
        pool.failed(backup, now: 0)
        answer = .failure(ResolutionError(host: "both.test", reason: "Temporary failure in name resolution"))
        refresh = pool.refresh(resolve: resolve)
        #expect(!refresh.changed)
        #expect(
            refresh.problems.map(\.description) == ["cannot resolve both.test: Temporary failure in name resolution"])
        #expect(pool.candidates(now: 1).map(\.address) == [v4, backup])
        answer = .success([v6])
        refresh = pool.refresh(resolve: resolve)
        #expect(!refresh.changed)
        #expect(
            refresh.problems.map(\.description) == [
                "both.test:25 has no address of the family of a --source address (only [::1]:25)"
            ])
        #expect(pool.addresses == [v4, backup])
        answer = .success([v6, v4Later])
        refresh = pool.refresh(resolve: resolve)
        #expect(refresh.changed && refresh.problems.isEmpty)
        #expect(pool.addresses == [v4Later, backup])
        // The back-off of the backup, which remained, is kept.
        #expect(pool.candidates(now: 2).map(\.address) == [v4Later, backup])
        pool.failed(v4Later, now: 1000)
        #expect(pool.candidates(now: 1001).map(\.address) == [backup, v4Later])
    }

    @Test func namedEndpoint_takesAnOptionalName() throws {
        let named = try NamedEndpoint(parsing: "smtp=[::]:25", portZero: .allowed)
        #expect(named.name == "smtp")
        #expect(named.endpoint.description == "[::]:25")
        #expect(try NamedEndpoint(parsing: "127.0.0.1:80").name == nil)
        #expect(throws: AddressError.self) { try NamedEndpoint(parsing: "=127.0.0.1:80") }
        #expect(throws: AddressError.self) { try NamedEndpoint(parsing: "a b=127.0.0.1:80") }
        #expect(throws: AddressError.self) { try NamedEndpoint(parsing: "web=127.0.0.1") }
    }

    /// `--loopback-congestion-control`: reno unless told, `system` leaves the system's, any other word names an
    /// algorithm (the kernel is asked at start); a name TCP_CONGESTION cannot take is refused at once.
    @Test func loopbackCongestionControl_isRenoUnlessToldOtherwise() throws {
        func algorithm(_ value: String?) throws -> CongestionControl? {
            var options = Options(remote: ["127.0.0.1:1"])
            if let value { options.loopbackCongestionControl = value }
            return try options.configuration().relay.loopbackCongestionControl
        }
        #expect(try algorithm(nil) == .reno)
        #expect(try algorithm("system") == nil)
        #expect(try algorithm("cubic")?.name == "cubic")
        #expect(try algorithm("a23456789012345")?.name == "a23456789012345")
        for bad in ["", "a234567890123456", "new reno", "bbr\n", "rén"] {
            #expect(throws: OptionError.self) { try algorithm(bad) }
        }
    }
}
