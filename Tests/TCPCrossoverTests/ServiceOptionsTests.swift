import TCPCrossover
import Testing

/// The options that may be given per service (`--proxy-protocol imap=v2`): a named value goes to that service only,
/// an unnamed one is the default of the others, and a name that no `--remote` has is refused.
@Suite struct ServiceOptionsTests {
    /// Two services, smtp and imap, as a mail relay has them.
    static func mailRelay(_ change: (inout Options) -> Void) throws -> Configuration {
        var options = Options(
            local: ["smtp=[::]:25", "imap=[::]:143"], remote: ["smtp=127.0.0.1:25", "imap=127.0.0.1:10143"])
        change(&options)
        return try options.configuration()
    }

    static func range(_ text: String) -> AddressRange { try! AddressRange(parsing: text) }

    @Test func unnamedValue_isTheDefaultOfEveryService() throws {
        let configuration = try Self.mailRelay {
            $0.proxyProtocol = ["v1"]
            $0.connectTimeout = ["2"]
            $0.deny = ["192.0.2.0/24"]
        }
        #expect(configuration.relay.service.proxyProtocol == .v1)
        #expect(configuration.relay.service.connectTimeout == 2000)
        #expect(configuration.relay.service.access.deny == [Self.range("192.0.2.0/24")])
        #expect(configuration.serviceOptions.isEmpty)
    }

    @Test func namedValue_appliesToThatServiceOnly() throws {
        let configuration = try Self.mailRelay {
            $0.proxyProtocol = ["imap=v2"]
            $0.idleTimeout = ["imap=1800"]
            $0.source = ["imap=127.0.0.2"]
            $0.deny = ["imap=198.51.100.0/24"]
        }
        #expect(configuration.relay.service == ServiceOptions())
        #expect(configuration.serviceOptions.keys.sorted() == ["imap"])
        let imap = try #require(configuration.serviceOptions["imap"])
        #expect(imap.proxyProtocol == .v2)
        #expect(imap.idleTimeout == 1_800_000)
        #expect(imap.sources == [SocketAddress(numericHost: "127.0.0.2")!])
        #expect(imap.access == AccessRules(allow: [], deny: [Self.range("198.51.100.0/24")]))
        #expect(imap.connectTimeout == ServiceOptions().connectTimeout)
    }

    @Test func namedAndUnnamed_theServiceKeepsTheDefaultsItDoesNotOverride() throws {
        let configuration = try Self.mailRelay {
            $0.proxyProtocol = ["v1", "imap=v2"]
            $0.connectDeadline = ["5"]
            $0.allow = ["10.0.0.0/8", "imap=172.16.0.0/12", "imap=192.168.0.0/16"]
            $0.deny = ["10.1.0.0/16"]
        }
        #expect(configuration.relay.service.proxyProtocol == .v1)
        #expect(configuration.relay.service.access.allow == [Self.range("10.0.0.0/8")])
        let imap = try #require(configuration.serviceOptions["imap"])
        #expect(imap.proxyProtocol == .v2)
        #expect(imap.connectDeadline == 5000)
        // Its own --allow list replaces the default one; the default --deny still applies.
        #expect(imap.access.allow == [Self.range("172.16.0.0/12"), Self.range("192.168.0.0/16")])
        #expect(imap.access.deny == [Self.range("10.1.0.0/16")])
        #expect(configuration.serviceOptions["smtp"] == nil)
    }

    @Test func keepaliveAndConnectionLines_perService() throws {
        let configuration = try Self.mailRelay {
            $0.keepalive = ["off", "imap=60"]
            $0.logConnections = ["smtp=no"]
        }
        #expect(configuration.relay.service.keepalive == nil)
        #expect(configuration.relay.service.logConnections)
        #expect(configuration.serviceOptions["imap"]?.keepalive == Keepalive(idle: 60, interval: 15, count: 4))
        #expect(configuration.serviceOptions["imap"]?.logConnections == true)
        #expect(configuration.serviceOptions["smtp"]?.keepalive == nil)
        #expect(configuration.serviceOptions["smtp"]?.logConnections == false)
    }

    /// `--splice app=no`: that service copies, the others splice bulk data.
    @Test func splice_perService() throws {
        let configuration = try Self.mailRelay { $0.splice = ["imap=no"] }
        #expect(configuration.relay.service.splice)
        #expect(configuration.serviceOptions["imap"]?.splice == false)
        #expect(configuration.serviceOptions["smtp"] == nil)
        #expect(throws: OptionError.self) { try Self.mailRelay { $0.splice = ["imap=never"] } }
    }

    @Test func perClientLimits_perService() throws {
        let configuration = try Self.mailRelay {
            $0.maxConnectionsPerClient = ["smtp=5"]
            $0.maxNewConnectionsPerClient = ["imap=30/60"]
            $0.clientPrefixLength = ["24,56"]
        }
        #expect(!configuration.relay.service.limitsClients)
        let smtp = try #require(configuration.serviceOptions["smtp"])
        #expect(smtp.maximumConnectionsPerClient == 5 && smtp.newConnectionRatePerClient == nil)
        #expect(smtp.clientPrefixes == ClientPrefixes(ipv4: 24, ipv6: 56))
        let imap = try #require(configuration.serviceOptions["imap"])
        #expect(imap.maximumConnectionsPerClient == nil)
        #expect(imap.newConnectionRatePerClient == ConnectionRate(count: 30, period: 60_000))
        // A prefix length for a service without a limit, or for no service with one, has no effect: refused.
        #expect(throws: OptionError.self) { try Self.mailRelay { $0.clientPrefixLength = ["smtp=24,56"] } }
        #expect(throws: OptionError.self) {
            try Self.mailRelay {
                $0.maxConnectionsPerClient = ["imap=5"]
                $0.clientPrefixLength = ["smtp=24,56"]
            }
        }
        #expect(throws: OptionError.self) { try Self.mailRelay { $0.clientPrefixLength = ["24,56"] } }
    }

    @Test func singleValuedOption_givenTwiceForAService_keepsTheLast() throws {
        let configuration = try Self.mailRelay { $0.connectTimeout = ["1", "smtp=3", "7", "smtp=4"] }
        #expect(configuration.relay.service.connectTimeout == 7000)
        #expect(configuration.serviceOptions["smtp"]?.connectTimeout == 4000)
    }

    @Test func nameThatNoRemoteHas_isAnError() {
        for change: (inout Options) -> Void in [
            { $0.proxyProtocol = ["imapp=v2"] }, { $0.source = ["pop3=127.0.0.1"] }, { $0.deny = ["=10.0.0.0/8"] },
            { $0.idleTimeout = ["submission=60"] }, { $0.keepalive = ["pop3=60"] }, { $0.logConnections = ["x=no"] },
        ] {
            #expect(throws: OptionError.self) { try Self.mailRelay(change) }
        }
        let error = #expect(throws: OptionError.self) { try Self.mailRelay { $0.proxyProtocol = ["imapp=v2"] } }
        #expect(
            error?.description
                == "--proxy-protocol imapp=v2: no service is named 'imapp'; give --remote imapp=ADDRESS:PORT or "
                + "leave the name out")
    }

    @Test func badValueForAService_isAnError() {
        #expect(throws: OptionError.self) { try Self.mailRelay { $0.proxyProtocol = ["imap=v3"] } }
        #expect(throws: OptionError.self) { try Self.mailRelay { $0.connectTimeout = ["imap=0"] } }
        #expect(throws: OptionError.self) { try Self.mailRelay { $0.source = ["imap=127.0.0.1", "imap=127.0.0.2"] } }
        #expect(throws: OptionError.self) { try Self.mailRelay { $0.allow = ["imap=10.0.0.0/33"] } }
    }

    /// The table's `perService` and the parsing agree: every option it marks takes a name (and repeats).
    @Test func everyPerServiceOptionOfTheTable_takesAServiceName() throws {
        let marked = optionTable.filter(\.perService)
        #expect(marked.count == 13)
        for option in marked {
            #expect(option.kind == .repeatable, "--\(option.name)")
            let options = try #require(
                QuickCommandLine.parse(["--remote", "imap=127.0.0.1:1", "--\(option.name)", "nosuch=1"]),
                "--\(option.name)")
            let error = #expect(throws: OptionError.self, "--\(option.name)") { try options.configuration() }
            #expect(error?.description.hasPrefix("--\(option.name) nosuch=1: no service is named 'nosuch'") == true)
        }
    }

    @Test func quickCommandLine_collectsEveryValueOfAPerServiceOption() throws {
        let options = try #require(
            QuickCommandLine.parse([
                "--remote", "imap=127.0.0.1:10143", "--proxy-protocol", "v1", "--proxy-protocol=imap=v2",
                "--connect-timeout", "imap=3",
            ]))
        #expect(options.proxyProtocol == ["v1", "imap=v2"])
        #expect(options.connectTimeout == ["imap=3"])
        let configuration = try options.configuration()
        #expect(configuration.serviceOptions["imap"]?.proxyProtocol == .v2)
        #expect(configuration.serviceOptions["imap"]?.connectTimeout == 3000)
    }
}
