import TCPCrossover
import Testing

@Suite struct StartModeTests {
    static let tcpListener = DescriptorKind.socket(family: .ipv6, stream: true, listening: true)
    static let tcpConnection = DescriptorKind.socket(family: .ipv4, stream: true, listening: false)
    static let udp = DescriptorKind.socket(family: .ipv4, stream: false, listening: false)
    static let unixStream = DescriptorKind.socket(family: .unix, stream: true, listening: true)

    func message(_ result: Result<StartMode, StartupError>) -> String? {
        guard case .failure(let error) = result else { return nil }
        #expect(error.status == 64)
        return error.message
    }

    @Test func systemd_withListeningSockets_servesEachWithTheAcceptLoop() {
        let passed = [
            InheritedDescriptor(fd: 3, name: "smtp", kind: Self.tcpListener),
            InheritedDescriptor(fd: 4, name: "submission", kind: Self.tcpListener),
        ]
        #expect(
            StartMode.decide(systemd: passed, standardInput: .notSocket, hasLocal: false)
                == .success(.systemdListeners(passed)))
    }

    @Test func systemd_withOneConnection_relaysIt() {
        let passed = [InheritedDescriptor(fd: 3, kind: Self.tcpConnection)]
        #expect(
            StartMode.decide(systemd: passed, standardInput: .notSocket, hasLocal: false)
                == .success(.systemdConnection(passed[0])))
    }

    @Test func systemd_takesPrecedenceOverStandardInput() {
        let passed = [InheritedDescriptor(fd: 3, kind: Self.tcpListener)]
        #expect(
            StartMode.decide(systemd: passed, standardInput: Self.tcpConnection, hasLocal: false)
                == .success(.systemdListeners(passed)))
    }

    @Test func systemd_withLocal_isAUsageError() {
        let passed = [InheritedDescriptor(fd: 3, kind: Self.tcpListener)]
        #expect(
            message(StartMode.decide(systemd: passed, standardInput: .notSocket, hasLocal: true))?
                .hasPrefix("--local cannot be used with the 1 socket(s) systemd passed") == true)
    }

    @Test(arguments: [
        (DescriptorKind.notSocket, "descriptor 3 (\"web\") passed by systemd is not a socket"),
        (DescriptorKind.closed, "descriptor 3 (\"web\") passed by systemd is not a socket"),
        (StartModeTests.udp, "is not a stream socket; tcp-crossover relays TCP (use ListenStream=)"),
        (StartModeTests.unixStream, "is not a TCP socket (IPv4 or IPv6)"),
    ])
    func systemd_withUnusableDescriptor_saysWhich(kind: DescriptorKind, expected: String) {
        let passed = [InheritedDescriptor(fd: 3, name: "web", kind: kind)]
        let text = message(StartMode.decide(systemd: passed, standardInput: .notSocket, hasLocal: false))
        #expect(text?.contains(expected) == true, "\(text ?? "accepted")")
    }

    @Test func systemd_withConnectionsAndListenersMixed_isAUsageError() {
        let passed = [
            InheritedDescriptor(fd: 3, kind: Self.tcpListener), InheritedDescriptor(fd: 4, kind: Self.tcpConnection),
        ]
        #expect(
            message(StartMode.decide(systemd: passed, standardInput: .notSocket, hasLocal: false))?
                .contains("Accept=yes passes exactly one connection") == true)
    }

    @Test func inetd_connectedStandardInput_isRelayed() {
        #expect(
            StartMode.decide(systemd: [], standardInput: Self.tcpConnection, hasLocal: false)
                == .success(.inetdConnection))
    }

    @Test func xinetdWait_listeningStandardInput_getsTheAcceptLoop() {
        #expect(
            StartMode.decide(systemd: [], standardInput: Self.tcpListener, hasLocal: false)
                == .success(.inetdListener))
    }

    @Test func inetd_datagramStandardInput_isAUsageError() {
        #expect(
            message(StartMode.decide(systemd: [], standardInput: Self.udp, hasLocal: false))?
                .contains("standard input is a datagram socket") == true)
    }

    @Test func inetd_withLocal_isAUsageError() {
        #expect(
            message(StartMode.decide(systemd: [], standardInput: Self.tcpConnection, hasLocal: true))?
                .contains("--local cannot be used when standard input is a socket") == true)
    }

    @Test func standalone_needsLocal() {
        #expect(StartMode.decide(systemd: [], standardInput: .notSocket, hasLocal: true) == .success(.standalone))
        // A Unix socket on standard input (a supervisor's) is not inetd's.
        #expect(StartMode.decide(systemd: [], standardInput: Self.unixStream, hasLocal: true) == .success(.standalone))
        #expect(
            message(StartMode.decide(systemd: [], standardInput: .notSocket, hasLocal: false))?
                .hasPrefix("nothing to listen on: give --local ADDRESS:PORT") == true)
    }
}
