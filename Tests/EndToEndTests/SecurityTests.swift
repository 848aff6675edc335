import Foundation
import Glibc
import Testing

/// What a backend on this machine sees through the relay: the warning at start, and the shipped SMTP configuration
/// against the real Postfix and Dovecot of Debian, with a client from "the internet" (a network namespace with a
/// global IPv6 address).
@Suite struct SecurityTests {
    static let warning = "without --proxy-protocol: the server there sees every client as a local one"

    /// How many lines of `text` carry the warning.
    static func warnings(_ text: String) -> Int {
        text.split(separator: "\n").filter { $0.contains(warning) }.count
    }

    @Test func localRemoteWithoutProxyProtocol_isWarnedOfOnce_atStart() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(local: ["[::1]:0", "127.0.0.1:0"], remote: backend.address.description)
        defer { relay.stop() }
        let output = relay.process.standardError
        #expect(Self.warnings(output) == 1, "\(output)")
        #expect(output.contains("relaying to \(backend.address), on this machine, \(Self.warning)"), "\(output)")
        #expect(output.contains("see SECURITY in tcp-crossover(8) or the README, or give --no-proxy-warning"))
        // Connections do not repeat it.
        _ = try ActivationTests.exchange(relay.address, Array("x".utf8))
        _ = try ActivationTests.exchange(relay.address, Array("y".utf8))
        #expect(eventually { relay.connectionLines.count == 2 })
        #expect(Self.warnings(relay.process.standardError) == 1, "\(relay.process.standardError)")
    }

    @Test(arguments: [["--proxy-protocol", "v2"], ["--proxy-protocol", "v1"], ["--no-proxy-warning"]])
    func localRemote_withProxyProtocolOrTheFlag_isNotWarnedOf(arguments: [String]) throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(family: AF_INET6, remote: backend.address, arguments)
        defer { relay.stop() }
        #expect(Self.warnings(relay.process.standardError) == 0, "\(relay.process.standardError)")
    }

    /// Per service: the warning names the remotes of the services without PROXY protocol only.
    @Test func severalServices_onlyTheOneWithoutProxyProtocol_isWarnedOf() throws {
        let postfix = try RelayTests.echoServer()
        let dovecot = try RelayTests.echoServer()
        let relay = try Relay(
            local: ["smtp=127.0.0.1:0", "imap=127.0.0.1:0"], remote: "smtp=\(postfix.address)",
            ["--remote", "imap=\(dovecot.address)", "--proxy-protocol", "imap=v2"])
        defer { relay.stop() }
        let output = relay.process.standardError
        #expect(Self.warnings(output) == 1, "\(output)")
        #expect(output.contains("relaying to \(postfix.address), on this machine, \(Self.warning)"), "\(output)")
    }

    /// In a network namespace of its own with 192.0.2.1 on its loopback interface (not a loopback address): a
    /// remote at that address of the machine is warned of, one at 192.0.2.2, elsewhere, is not.
    @Test func remoteAtAnotherAddressOfThisMachine_isWarnedOf_anotherMachineIsNot() throws {
        try #require(getuid() == 0, "needs root for a network namespace")
        let script = """
            set -eu
            ip link set lo up
            ip addr add 192.0.2.1/32 dev lo
            for remote in 192.0.2.1:25 192.0.2.2:25; do
                timeout -s TERM 5 "$0" --local '[::1]:0' --remote "$remote" --foreground 2>&1 &
                relay=$!
                sleep 1
                kill "$relay" 2> /dev/null || true
                wait "$relay" || true
            done
            """
        let process = try ChildProcess("/usr/bin/unshare", ["-n", "/bin/bash", "-c", script, relayBinary])
        #expect(process.waitForExit(timeout: 30) == 0, "\(process.standardError)")
        let output = process.standardOutput
        #expect(output.components(separatedBy: "listening on").count == 3, "\(output)")
        #expect(output.contains("relaying to 192.0.2.1:25, on this machine, \(Self.warning)"), "\(output)")
        #expect(Self.warnings(output) == 1, "\(output)")
    }

    /// Serving a listening socket from systemd (Accept=no) warns once; a process per connection (Accept=yes) never.
    @Test func socketActivation_warnsWhenServingTheListener_butNotPerConnection() throws {
        let backend = try ActivationTests.bannerEchoServer()
        let listenerPort = try ActivationTests.freePort()
        let listener = try ChildProcess(
            ActivationTests.socketActivate,
            ["-l", "[::1]:\(listenerPort)", relayBinary, "--remote", backend.address.description])
        _ = try ActivationTests.connectWhenListening(.ipv6("::1", listenerPort))
        #expect(listener.waitForError(containing: "serving [::1]:\(listenerPort)"), "\(listener.standardError)")
        #expect(Self.warnings(listener.standardError) == 1, "\(listener.standardError)")
        listener.kill(signal: SIGTERM)
        _ = listener.waitForExit()

        let perConnectionPort = try ActivationTests.freePort()
        let perConnection = try ChildProcess(
            ActivationTests.socketActivate,
            ["-l", "[::1]:\(perConnectionPort)", "--accept", relayBinary, "--remote", backend.address.description])
        _ = try ActivationTests.connectWhenListening(.ipv6("::1", perConnectionPort))
        #expect(
            try ActivationTests.exchange(.ipv6("::1", perConnectionPort), Array("x".utf8))
                == Array("220 ready\r\nx".utf8))
        #expect(perConnection.waitForError(containing: "1 bytes up, 12 bytes down"), "\(perConnection.standardError)")
        #expect(eventually { perConnection.standardError.components(separatedBy: "died with code 0").count == 3 })
        #expect(Self.warnings(perConnection.standardError) == 0, "\(perConnection.standardError)")
        perConnection.kill(signal: SIGTERM)
        _ = perConnection.waitForExit()
    }

    // MARK: the shipped SMTP configuration

    /// The arguments of the shipped SMTP service's ExecStart=, after the binary.
    static func shippedSMTPArguments() throws -> String {
        let unit = try String(contentsOfFile: repositoryPath("units/tcp-crossover-smtp.service"), encoding: .utf8)
        let line = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        return String(line.dropFirst("ExecStart=/usr/bin/tcp-crossover ".count))
    }

    /// The unit and the xinetd entry send the same remote the same PROXY header. (The unit's per-client limit has
    /// no place in the xinetd entry, whose processes serve one connection each: xinetd's per_source does it there.)
    @Test func shippedSMTPConfigurations_relayWithProxyProtocol_alike() throws {
        let arguments = try Self.shippedSMTPArguments()
        #expect(arguments.contains("--proxy-protocol v2"), "\(arguments)")
        let relaying = try #require(arguments.components(separatedBy: " --max-connections-per-client").first)
        let entry = try String(contentsOfFile: repositoryPath("xinetd/tcp-crossover-smtp"), encoding: .utf8)
        #expect(entry.contains("\tserver_args\t= \(relaying)\n"), "\(entry)")
        #expect(entry.contains("\tper_source\t= "), "\(entry)")
    }

    /// The recipes of docs/SECURITY.md (where the README's Security section points) are the files the mail server
    /// test applies, word for word.
    @Test(arguments: ["postfix-master.cf", "postfix-no-proxy.cf", "dovecot-relayed.conf"])
    func securityPage_givesTheRecipesTheTestRuns(file: String) throws {
        let page = try String(contentsOfFile: repositoryPath("docs/SECURITY.md"), encoding: .utf8)
        let recipe = try String(contentsOfFile: repositoryPath("Tests/MailServers/\(file)"), encoding: .utf8)
        let indented = recipe.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            .map { $0.isEmpty ? "" : "    " + $0 }.joined(separator: "\n")
        #expect(page.contains(indented + "\n"), "docs/SECURITY.md lacks the recipe of \(file):\n\(indented)")
    }

    /// Debian's Postfix ("Internet Site", IPv4 only) and Dovecot, each in namespaces of the test's own
    /// (Tests/MailServers/run), behind the relay started with the shipped SMTP unit's arguments; the client is in a
    /// second network namespace with a global IPv6 address.
    @Test func mailServers_behindTheShippedConfiguration_trustNoOutsideClient() throws {
        try #require(getuid() == 0, "needs root for namespaces")
        for program in ["/usr/sbin/postfix", "/usr/sbin/dovecot", "/usr/bin/python3"] {
            try #require(FileManager.default.isExecutableFile(atPath: program), "\(program) is missing: make test-deps")
        }
        let directory = TemporaryDirectory()
        let process = try ChildProcess(
            "/usr/bin/unshare",
            [
                "--kill-child", "--fork", "--pid", "--mount-proc", "--net", "--mount",
                repositoryPath("Tests/MailServers/run"), directory.path, relayBinary, try Self.shippedSMTPArguments(),
            ])
        let status = process.waitForExit(timeout: 180)
        let output = process.standardOutput
        let context = "\(output)\n\(process.standardError)"
        #expect(status == 0, "\(context)")
        let lines = output.split(separator: "\n").map(String.init)
        func answer(_ prefix: String) -> String { lines.first { $0.hasPrefix(prefix + " ") } ?? "(no \(prefix))" }

        // Until Postfix opens the port for relayed connections, they are refused: nothing is open.
        #expect(answer("before closed").contains("Connection reset"), "\(context)")
        // With the recipe of docs/SECURITY.md: no relaying for the outside client, mail for the local domain accepted.
        #expect(answer("after relay").hasPrefix("after relay 454 4.7.1"), "\(context)")
        #expect(answer("after relay").hasSuffix("Relay access denied"), "\(context)")
        #expect(answer("after local").hasPrefix("after local 250 "), "\(context)")
        #expect(answer("after data").hasPrefix("after data 250 2.0.0 Ok: queued as "), "\(context)")
        // A message of 3.2 MB (bulk data: the relay splices it) arrives whole: Postfix accepts it after its final
        // dot, and its queue manager counts all of its 3,200,036 bytes (40,000 lines of 80 and the Subject line)
        // and the headers Postfix adds.
        #expect(answer("after large").hasPrefix("after large 250 2.0.0 Ok: queued as "), "\(context)")
        let sizes = lines.filter { $0.contains("postfix/qmgr") }.compactMap { line -> Int? in
            guard let range = line.range(of: "size=") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
        #expect(sizes.contains { $0 >= 3_200_036 }, "\(context)")
        // Postfix logs the client's own address.
        let relayed = lines.filter { $0.contains("postfix/relayed/smtpd") && $0.contains("connect from") }
        #expect(relayed.count == 2, "\(context)")
        #expect(relayed.allSatisfy { $0.contains("unknown[2001:db8:25::2]") }, "\(context)")
        #expect(!lines.contains { $0.contains("postfix/relayed/smtpd") && $0.contains("[127.0.0.1]") }, "\(context)")

        // The recipes for a backend that cannot read PROXY: a second smtpd that trusts no network, or a --source
        // address that Postfix does not trust. Both refuse to relay and accept local mail.
        for recipe in ["untrusted", "source"] {
            #expect(answer("\(recipe) relay").hasPrefix("\(recipe) relay 454 4.7.1"), "\(context)")
            #expect(answer("\(recipe) local").hasPrefix("\(recipe) local 250 "), "\(context)")
            #expect(answer("\(recipe) large").hasPrefix("\(recipe) large 250 2.0.0 Ok: queued as "), "\(context)")
        }

        // Dovecot: the password is right (a local client logs in), and the outside client's plaintext login is
        // refused through the relay as it is directly.
        #expect(answer("local login") == "local login ok", "\(context)")
        let refusal = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"
        #expect(answer("direct login").hasPrefix("direct login refused") && answer("direct login").contains(refusal))
        #expect(answer("relayed login").hasPrefix("relayed login refused"), "\(context)")
        #expect(answer("relayed login").contains(refusal), "\(context)")
        // The relayed session is logged with the client's address (rip=) and the relay's address it reached (lip=).
        let dovecot = lines.filter { $0.hasPrefix("dovecot.log: ") }
        #expect(dovecot.contains { $0.contains("rip=2001:db8:25::2, lip=2001:db8:25::1,") }, "\(context)")
        #expect(!dovecot.contains { $0.contains("rip=127.0.0.1") }, "\(context)")
    }
}
