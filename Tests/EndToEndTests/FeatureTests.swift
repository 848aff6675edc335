import Foundation
import Glibc
import Testing

/// A real nginx, started by the test in a directory of its own, answering every request with what the PROXY
/// protocol header told it: `$proxy_protocol_addr $proxy_protocol_port`.
final class ProxyProtocolNginx {
    let port: UInt16
    private let directory = TemporaryDirectory()
    private let process: ChildProcess

    init() throws {
        port = try ActivationTests.freePort(host: "127.0.0.1")
        let path = directory.path
        let configuration = """
            daemon off;
            master_process off;
            worker_processes 1;
            pid \(path)/nginx.pid;
            error_log \(path)/error.log;
            events { worker_connections 256; }
            http {
                access_log off;
                client_body_temp_path \(path)/body;
                proxy_temp_path \(path)/proxy;
                fastcgi_temp_path \(path)/fastcgi;
                uwsgi_temp_path \(path)/uwsgi;
                scgi_temp_path \(path)/scgi;
                server {
                    listen 127.0.0.1:\(port) proxy_protocol;
                    location / {
                        default_type text/plain;
                        return 200 "$proxy_protocol_addr $proxy_protocol_port\\n";
                    }
                }
            }
            """
        try configuration.write(toFile: "\(path)/nginx.conf", atomically: true, encoding: .utf8)
        process = try ChildProcess("/usr/sbin/nginx", ["-c", "\(path)/nginx.conf", "-p", path])
        _ = try ActivationTests.connectWhenListening(.ipv4("127.0.0.1", port))
    }

    deinit {
        process.kill(signal: SIGTERM)
        _ = process.waitForExit()
    }

    /// One HTTP request through `address`; the body nginx answered.
    static func ask(_ address: TestAddress) throws -> (body: String, clientPort: UInt16) {
        let connection = try TestSocket.connect(to: address)
        let port = connection.localAddressPort
        try connection.send("GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        let response = String(decoding: try connection.receiveAll(), as: UTF8.self)
        return (response.components(separatedBy: "\r\n\r\n").last ?? "", port)
    }
}

/// What users of the peers have had to build around: the client's real address (PROXY protocol), failover, a
/// source address, access control, several services in one process.
@Suite struct FeatureTests {
    @Test(arguments: ["v1", "v2"])
    func proxyProtocol_nginxSeesTheRealClientAddress(version: String) throws {
        let nginx = try ProxyProtocolNginx()
        let relay = try Relay(
            local: ["[::1]:0", "127.0.0.1:0"], remote: "127.0.0.1:\(nginx.port)", ["--proxy-protocol", version])
        let ports = relay.listening.map { UInt16($0.split(separator: ":").last!)! }
        let overIPv6 = try ProxyProtocolNginx.ask(.ipv6("::1", ports[0]))
        #expect(overIPv6.body == "::1 \(overIPv6.clientPort)\n", "\(overIPv6.body)")
        let overIPv4 = try ProxyProtocolNginx.ask(.ipv4("127.0.0.1", ports[1]))
        #expect(overIPv4.body == "127.0.0.1 \(overIPv4.clientPort)\n", "\(overIPv4.body)")
        // The header is not counted among the client's bytes.
        #expect(eventually { relay.connectionLines.count == 2 })
        let request = "GET / HTTP/1.0\r\nHost: test\r\n\r\n".utf8.count
        #expect(relay.connectionLines.allSatisfy { $0.contains(" \(request) bytes up, ") }, "\(relay.connectionLines)")
    }

    @Test func proxyProtocol_dualStackClientIsSentAsIPv4() throws {
        let nginx = try ProxyProtocolNginx()
        let relay = try Relay(
            local: ["[::]:0"], remote: "127.0.0.1:\(nginx.port)", ["--proxy-protocol", "v2", "--dual-stack"])
        let answer = try ProxyProtocolNginx.ask(.ipv4("127.0.0.1", relay.address.port))
        #expect(answer.body == "127.0.0.1 \(answer.clientPort)\n", "\(answer.body)")
    }

    @Test func failover_triesTheNextRemoteAndSkipsTheFailedOneAfterwards() throws {
        let refusing = try TestServer(accepting: false) { _ in }
        let deadAddress = refusing.address
        refusing.stop()
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: deadAddress.description,
            ["--remote", backend.address.description, "--debug"])
        for index in 0..<3 {
            let connection = try TestSocket.connect(to: relay.address)
            try connection.send("try \(index)")
            try connection.shutdownWrite()
            #expect(try connection.receiveAll() == Array("try \(index)".utf8))
        }
        #expect(eventually { relay.connectionLines.count == 3 })
        #expect(relay.connectionLines.allSatisfy { $0.contains("-> \(backend.address):") })
        // Only the first connection tried the dead remote; the others went straight to the live one.
        let attempts = relay.process.standardError.components(separatedBy: "connect to \(deadAddress) failed").count - 1
        #expect(attempts == 1, "\(attempts) attempts on the dead remote")
    }

    @Test func failover_afterATimeoutUsesTheNextRemote() throws {
        let blackHole = try TestServer(backlog: 0, accepting: false) { _ in }
        var fillers: [TestSocket] = []
        for _ in 0..<8 {
            if let socket = try? TestSocket.connect(to: blackHole.address, timeout: 0.3) { fillers.append(socket) }
        }
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: blackHole.address.description,
            ["--remote", backend.address.description, "--connect-timeout", "0.5", "--debug"])
        for index in 0..<2 {
            let connection = try TestSocket.connect(to: relay.address)
            try connection.send("after timeout \(index)")
            try connection.shutdownWrite()
            #expect(try connection.receiveAll() == Array("after timeout \(index)".utf8))
        }
        // Log lines are written by a thread of their own, a moment later.
        let timeouts = { relay.process.standardError.components(separatedBy: "timed out after 0.5 s").count - 1 }
        #expect(eventually { timeouts() >= 1 })
        #expect(timeouts() == 1, "\(timeouts()) timeouts")
        _ = fillers
    }

    /// A host name among the remotes is looked up again: the test gives the relay a private /etc/hosts (in a
    /// mount namespace of its own) and changes the name's address while the relay runs.
    @Test func remoteHostName_isLookedUpAgainWhenItsAddressChanges() throws {
        try #require(getuid() == 0, "needs root for a mount namespace")
        let first = try TestServer(host: "127.0.0.2") { connection in try connection.send("first") }
        let second = try TestServer(host: "127.0.0.3", port: first.port) { connection in
            try connection.send("second")
        }
        let directory = TemporaryDirectory()
        let hosts = "\(directory.path)/hosts"
        try "127.0.0.2 backend.tcx-test\n".write(toFile: hosts, atomically: false, encoding: .utf8)
        let command =
            inMountNamespace(binding: [(hosts, "/etc/hosts")]) + [
                relayBinary, "--local", "127.0.0.1:0", "--remote", "backend.tcx-test:\(first.port)",
                "--resolve-interval", "0.2", "--foreground",
            ]
        let process = try ChildProcess(command[0], Array(command.dropFirst()))
        #expect(process.waitForError(containing: "listening on 127.0.0.1:"))
        let line = process.standardError.split(separator: "\n").first { $0.contains("listening on ") }!
        let port = UInt16(line.components(separatedBy: "listening on 127.0.0.1:")[1].prefix { $0.isNumber })!
        let before = try TestSocket.connect(to: .ipv4("127.0.0.1", port))
        #expect(try before.receive(exactly: 5) == Array("first".utf8))
        // Rewritten in place: the bind mount keeps showing the same file.
        let handle = try #require(FileHandle(forWritingAtPath: hosts))
        handle.truncateFile(atOffset: 0)
        handle.write(Data("127.0.0.3 backend.tcx-test\n".utf8))
        try handle.close()
        #expect(process.waitForError(containing: "now at 127.0.0.3:\(first.port)"), "\(process.standardError)")
        let after = try TestSocket.connect(to: .ipv4("127.0.0.1", port))
        #expect(try after.receive(exactly: 6) == Array("second".utf8))
        before.close()
        after.close()
        process.kill(signal: SIGTERM)
        #expect(process.waitForExit() == 0)
        // The second server listens until here.
        withExtendedLifetime(second) {}
    }

    @Test func source_outgoingConnectionsLeaveFromThatAddress() throws {
        let seen = Results()
        let backend = try TestServer(host: "127.0.0.1") { connection in
            var storage = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(connection.fd, $0, &length) }
            }
            var text = [CChar](repeating: 0, count: 32)
            inet_ntop(AF_INET, &storage.sin_addr, &text, 32)
            let address = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            seen.record(address == "127.0.0.2")
            try connection.send(Array(address.utf8))
        }
        let relay = try Relay(local: ["[::1]:0"], remote: backend.address.description, ["--source", "127.0.0.2"])
        let connection = try TestSocket.connect(to: relay.address)
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == Array("127.0.0.2".utf8))
        #expect(seen.successes == 1)
    }

    @Test func deny_refusesTheClientBeforeAnyConnectionToTheRemote() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["[::1]:0", "127.0.0.1:0"], remote: backend.address.description, ["--deny", "127.0.0.0/8"])
        let ports = relay.listening.map { UInt16($0.split(separator: ":").last!)! }
        let refused = try TestSocket.connect(to: .ipv4("127.0.0.1", ports[1]))
        #expect(refused.waitForEnding() == .reset)
        let allowed = try TestSocket.connect(to: .ipv6("::1", ports[0]))
        try allowed.send("v6")
        try allowed.shutdownWrite()
        #expect(try allowed.receiveAll() == Array("v6".utf8))
        #expect(backend.accepted == 1)
        #expect(
            eventually { relay.connectionLines.contains { $0.contains("end=refused: by --deny 127.0.0.0/8") } })
    }

    @Test func allow_servesOnlyThoseBlocksAndMatchesMappedAddressesAsIPv4() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["[::]:0"], remote: backend.address.description, ["--dual-stack", "--allow", "127.0.0.1/32"])
        let mapped = try TestSocket.connect(to: .ipv4("127.0.0.1", relay.address.port))
        try mapped.send("v4")
        try mapped.shutdownWrite()
        #expect(try mapped.receiveAll() == Array("v4".utf8))
        let notAllowed = try TestSocket.connect(to: .ipv6("::1", relay.address.port))
        #expect(notAllowed.waitForEnding() == .reset)
        #expect(eventually { relay.connectionLines.contains { $0.contains("end=refused: not in any --allow") } })
        #expect(backend.accepted == 1)
    }

    @Test func severalServices_standalone_eachNameGoesToItsRemote() throws {
        let mail = try TestServer { connection in try connection.send("220 mail") }
        let web = try TestServer { connection in try connection.send("HTTP web") }
        let relay = try Relay(
            local: ["smtp=127.0.0.1:0", "http=[::1]:0"], remote: "smtp=\(mail.address)",
            ["--remote", "http=\(web.address)"])
        #expect(relay.process.standardError.contains("relaying smtp to \(mail.address); http to \(web.address)"))
        let ports = relay.listening.map { UInt16($0.split(separator: ":").last!.prefix { $0.isNumber })! }
        let toMail = try TestSocket.connect(to: .ipv4("127.0.0.1", ports[0]))
        #expect(try toMail.receive(exactly: 8) == Array("220 mail".utf8))
        let toWeb = try TestSocket.connect(to: .ipv6("::1", ports[1]))
        #expect(try toWeb.receive(exactly: 8) == Array("HTTP web".utf8))
    }

    @Test func severalServices_eachHasItsOwnProxyProtocolAndAccessRules() throws {
        // Echo servers: what comes back is what the backend received, PROXY header included.
        let postfix = try RelayTests.echoServer()
        let dovecot = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["smtp=127.0.0.1:0", "smtp=[::1]:0", "imap=[::1]:0"], remote: "smtp=\(postfix.address)",
            [
                "--remote", "imap=\(dovecot.address)", "--proxy-protocol", "imap=v2", "--deny", "smtp=::1/128",
                "--log-connections", "imap=no",
            ])
        let ports = relay.listening.map { UInt16($0.split(separator: ":").last!.prefix { $0.isNumber })! }
        func exchange(_ address: TestAddress) throws -> [UInt8] {
            let connection = try TestSocket.connect(to: address)
            try connection.send("A1 LOGIN")
            try connection.shutdownWrite()
            return try connection.receiveAll()
        }
        // smtp: no PROXY header.
        #expect(try exchange(.ipv4("127.0.0.1", ports[0])) == Array("A1 LOGIN".utf8))
        // imap: the v2 header first, then the client's bytes; its client is not denied, as smtp's would be.
        let signature: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]
        let toDovecot = try exchange(.ipv6("::1", ports[2]))
        #expect(Array(toDovecot.prefix(12)) == signature, "\(toDovecot)")
        #expect(toDovecot.count == 16 + 36 + 8 && toDovecot.suffix(8) == Array("A1 LOGIN".utf8), "\(toDovecot)")
        // smtp from ::1: denied, before any connection to its remote.
        let refused = try TestSocket.connect(to: .ipv6("::1", ports[1]))
        #expect(refused.waitForEnding() == .reset)
        #expect(eventually { relay.connectionLines.contains { $0.contains("end=refused: by --deny ::1/128") } })
        #expect(postfix.accepted == 1)
        #expect(dovecot.accepted == 1)
        // imap's connections are not logged, smtp's are.
        #expect(relay.connectionLines.contains { $0.contains("\(postfix.address)") }, "\(relay.connectionLines)")
        #expect(!relay.connectionLines.contains { $0.contains("\(dovecot.address)") }, "\(relay.connectionLines)")
    }

    @Test func severalServices_socketActivation_pickTheRemoteByFileDescriptorName() throws {
        let mail = try TestServer { connection in try connection.send("220 mail") }
        let web = try TestServer { connection in try connection.send("HTTP web") }
        let smtpPort = try ActivationTests.freePort()
        let httpPort = try ActivationTests.freePort()
        let activator = try ChildProcess(
            ActivationTests.socketActivate,
            [
                "-l", "[::1]:\(smtpPort)", "-l", "[::1]:\(httpPort)", "--fdname=smtp:http", relayBinary,
                "--remote", "smtp=\(mail.address)", "--remote", "http=\(web.address)",
            ])
        let toMail = try ActivationTests.connectWhenListening(.ipv6("::1", smtpPort))
        #expect(try toMail.receive(exactly: 8) == Array("220 mail".utf8))
        let toWeb = try TestSocket.connect(to: .ipv6("::1", httpPort))
        #expect(try toWeb.receive(exactly: 8) == Array("HTTP web".utf8))
        toMail.close()
        toWeb.close()
        activator.kill(signal: SIGTERM)
        #expect(activator.waitForExit() == 0)
    }

    @Test(arguments: [
        (["--local", "a=127.0.0.1:0", "--remote", "b=127.0.0.1:1"], "no --remote for --local a=127.0.0.1:0"),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--remote", "b=127.0.0.1:1"],
            "--remote b=... names no listener among the --local"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--proxy-protocol", "v3"],
            "--proxy-protocol 'v3' is not a version; expected v1 or v2"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--source", "127.0.0.1:80"],
            "--source '127.0.0.1:80' is not an IPv4 or IPv6 address"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--source", "::1", "--source", "::2"],
            "--source is given twice for one family"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--deny", "10.0.0.0/33"],
            "the prefix length must be a number from 0 to 32"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--allow", "example.org/8"],
            "'example.org' is not an IPv4 or IPv6 address"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "[::1]:1", "--source", "127.0.0.1"],
            "no --remote address has the family of a --source address"
        ),
        (["--local", "127.0.0.1:0", "--remote", "a:b=127.0.0.1:1"], "'a:b' is not a name"),
        (
            ["--local", "smtp=127.0.0.1:0", "--remote", "smtp=127.0.0.1:1", "--proxy-protocol", "imap=v2"],
            "--proxy-protocol imap=v2: no service is named 'imap'"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--loopback-congestion-control", "new reno"],
            "--loopback-congestion-control 'new reno' is not an algorithm name"
        ),
        (
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--loopback-congestion-control", "tcx-no-such"],
            "--loopback-congestion-control: the kernel has no algorithm 'tcx-no-such'"
        ),
    ])
    func badFeatureOptions_getStatus64(arguments: [String], message: String) throws {
        let process = try ChildProcess(relayBinary, arguments + ["-f"])
        #expect(process.waitForExit() == 64)
        #expect(process.standardError.contains(message), "\(process.standardError)")
        #expect(process.standardError.filter { $0 == "\n" }.count == 1)
    }
}
