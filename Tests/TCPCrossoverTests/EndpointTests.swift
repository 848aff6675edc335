import TCPCrossover
import Testing

@Suite struct EndpointTests {
    @Test(arguments: [
        ("[::]:80", "[::]:80"),
        ("[2804:aabb:beba:cafe::ccdd]:25", "[2804:aabb:beba:cafe::ccdd]:25"),
        ("[::ffff:192.0.2.1]:443", "[::ffff:192.0.2.1]:443"),
        ("0.0.0.0:80", "0.0.0.0:80"),
        ("127.0.0.1:080", "127.0.0.1:80"),
        ("[fe80::1%lo]:22", "[fe80::1%lo]:22"),
        ("[fe80::1%1]:22", "[fe80::1%lo]:22"),
    ])
    func parse_whenAddressIsNumeric_givesThatAddress(text: String, expected: String) throws {
        let endpoint = try Endpoint(parsing: text)
        guard case .address(let address) = endpoint.host else {
            Issue.record("\(text) parsed as a name")
            return
        }
        #expect(address.description == expected)
        #expect(endpoint.description == expected)
    }

    @Test func parse_whenHostIsAName_keepsTheNameForResolution() throws {
        let endpoint = try Endpoint(parsing: "mail.example.org:25")
        #expect(endpoint.host == .name("mail.example.org"))
        #expect(endpoint.port == 25)
        #expect(try Endpoint(parsing: "localhost.:8080").host == .name("localhost."))
    }

    @Test func parse_whenIPv6HasAZone_setsTheScope() throws {
        let endpoint = try Endpoint(parsing: "[fe80::1%lo]:22")
        guard case .address(let address) = endpoint.host else {
            Issue.record("not an address")
            return
        }
        #expect(address.family == .ipv6)
        #expect(address.scopeID == 1)
    }

    @Test func parse_whenPortIsZero_isAllowedOnlyWhereAsked() throws {
        #expect(try Endpoint(parsing: "[::1]:0", portZero: .allowed).port == 0)
        #expect(throws: AddressError.self) { try Endpoint(parsing: "[::1]:0") }
    }

    @Test(arguments: [
        ("", "empty"),
        ("127.0.0.1", "port is missing"),
        ("[::1]", "port is missing"),
        ("[::1", "without a closing"),
        ("::1:80", "needs brackets: write [::1]:80"),
        ("2001:db8::1:25", "needs brackets"),
        ("[::1]:", "port is missing"),
        ("[::1]80", "expected ':' after ']'"),
        ("127.0.0.1:65536", "out of range"),
        ("127.0.0.1:99999999999999999999", "out of range"),
        ("127.0.0.1:-1", "not a number"),
        ("127.0.0.1:+80", "not a number"),
        ("127.0.0.1:http", "not a number"),
        ("256.1.1.1:80", "not an IPv4 address"),
        ("1.2.3:80", "not an IPv4 address"),
        ("[1.2.3.4]:80", "not an IPv6 address"),
        ("[::g]:80", "not an IPv6 address"),
        ("[fe80::1%]:22", "interface after '%' is missing"),
        ("[fe80::1%nosuchif0]:22", "no network interface 'nosuchif0'"),
        (":80", "host is missing"),
        ("host name:80", "space or control"),
        ("bad_host!:80", "not a host name"),
        ("a..b:80", "empty or over-long label"),
        ("ex\u{e4}mple.org:80", "non-ASCII"),
        ("[\u{0616}:80", "non-ASCII"),
        ("::1]:80", "needs brackets"),
        ("1.2.3.4]:80", "']' without an opening '['"),
    ])
    func parse_whenInputIsMalformed_saysWhatIsWrong(text: String, reason: String) {
        do {
            let endpoint = try Endpoint(parsing: text)
            Issue.record("'\(text)' parsed as \(endpoint)")
        } catch {
            #expect(error.description.contains(reason), "\(error)")
            #expect(error.description.contains(Endpoint.accepted))
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func errorMessage_whenInputHasControlCharacters_staysOnOneLine() {
        #expect(throws: AddressError.self) { try Endpoint(parsing: "a\nb:80") }
        do {
            _ = try Endpoint(parsing: "a\nb:80")
        } catch {
            #expect(error.description.contains("a\\x0Ab:80"))
        }
    }

    @Test func resolve_whenNameIsLocalhost_givesLoopbackAddressesWithThePort() throws {
        let addresses = try Endpoint(parsing: "localhost:8080").resolve().get()
        #expect(!addresses.isEmpty)
        #expect(addresses.allSatisfy { $0.port == 8080 })
        #expect(addresses.contains { $0.description == "127.0.0.1:8080" || $0.description == "[::1]:8080" })
    }

    @Test func resolve_whenNameDoesNotExist_saysSo() throws {
        let result = try Endpoint(parsing: "no-such-host.invalid:25").resolve()
        guard case .failure(let error) = result else {
            Issue.record("resolved")
            return
        }
        #expect(error.description.hasPrefix("cannot resolve no-such-host.invalid: "))
    }

    @Test func unmappedIPv4_whenAddressIsMapped_givesTheIPv4Address() throws {
        guard case .address(let mapped) = try Endpoint(parsing: "[::ffff:192.0.2.7]:25").host else { return }
        #expect(mapped.unmappedIPv4?.description == "192.0.2.7:25")
        guard case .address(let plain) = try Endpoint(parsing: "[2001:db8::7]:25").host else { return }
        #expect(plain.unmappedIPv4 == nil)
    }

    @Test(arguments: [
        ("127.0.0.1", true), ("127.255.3.4", true), ("::1", true), ("::ffff:127.0.0.1", true),
        ("126.255.255.255", false), ("128.0.0.1", false), ("0.0.0.0", false), ("::", false), ("::2", false),
        ("1::1", false), ("::ffff:10.0.0.1", false), ("::127.0.0.1", false), ("fe80::1", false),
        ("192.0.2.1", false),
    ])
    func isLoopback_coversTheLoopbackNetworksOfBothFamilies(text: String, loopback: Bool) throws {
        let address = try #require(SocketAddress(numericHost: text))
        #expect(address.isLoopback == loopback)
    }

    @Test(arguments: [
        ("192.0.2.1", "192.0.2.1", true), ("2001:db8::1", "2001:db8::1", true), ("127.0.0.2", "192.0.2.1", true),
        ("::1", "2001:db8::1", true), ("192.0.2.1", "192.0.2.2", false), ("2001:db8::1", "2001:db8::2", false),
        ("::ffff:192.0.2.1", "192.0.2.1", false), ("0.0.0.0", "0.0.0.0", false),
    ])
    func isOnThisMachine_isALoopbackPeerOrOneAtTheSocketsOwnAddress(peer: String, local: String, expected: Bool)
        throws
    {
        let peerAddress = try #require(SocketAddress(numericHost: peer))
        let localAddress = try #require(SocketAddress(numericHost: local))
        #expect(peerAddress.isOnThisMachine(localEnd: localAddress) == expected)
    }
}
