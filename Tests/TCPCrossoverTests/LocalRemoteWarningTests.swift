import Testing

@testable import TCPCrossover

@Suite struct LocalRemoteWarningTests {
    func service(_ addresses: [String]) -> Service {
        let parsed = addresses.map { SocketAddress(numericHost: $0)! }
        return Service(name: nil, pool: RemotePool(addresses: parsed))
    }

    @Test func localRemotes_areLoopbackAddressesAndThoseOfThisMachine_eachOnce() {
        let own = SocketAddress(numericHost: "192.0.2.1")!
        let services = [
            service(["127.0.0.1", "198.51.100.7", "::1"]), service(["192.0.2.1", "127.0.0.1", "::ffff:127.0.0.2"]),
            service(["2001:db8::25"]),
        ]
        let found = LocalRemoteWarning.localRemotes(services) { $0 == own }
        #expect(found.map(\.numericHost) == ["127.0.0.1", "::1", "192.0.2.1", "::ffff:127.0.0.2"])
        #expect(LocalRemoteWarning.localRemotes([service(["198.51.100.7", "2001:db8::25"])]) { _ in false }.isEmpty)
    }

    @Test func message_namesTheAddresses_andNothingWithoutThem() {
        #expect(LocalRemoteWarning.message(localRemotes: []) == nil)
        var remote = SocketAddress(numericHost: "127.0.0.1")!
        remote.port = 25
        let line = LocalRemoteWarning.message(localRemotes: [remote])
        #expect(line?.hasPrefix("relaying to 127.0.0.1:25, on this machine, without --proxy-protocol: ") == true)
        #expect(line?.hasSuffix("see SECURITY in tcp-crossover(8) or the README, or give --no-proxy-warning") == true)
    }

    @Test func option_noProxyWarning_turnsTheWarningOff() throws {
        #expect(try Options(remote: ["127.0.0.1:25"]).configuration().localRemoteWarning)
        #expect(try !Options(remote: ["127.0.0.1:25"], noProxyWarning: true).configuration().localRemoteWarning)
    }
}
