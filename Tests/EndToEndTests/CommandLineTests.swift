import Foundation
import Glibc
import Testing

/// The command line as the old tool's users type it, and what it says when they get it wrong.
@Suite struct CommandLineTests {
    static func run(_ arguments: [String]) throws -> (status: Int32?, output: String, error: String) {
        let process = try ChildProcess(relayBinary, arguments)
        let status = process.waitForExit(timeout: 20)
        return (status, process.standardOutput, process.standardError)
    }

    static func isRunning(_ pid: pid_t) -> Bool {
        kill(pid, 0) == 0
    }

    /// The seed's own command line, `--pidfile=` form: goes into the background, returns 0 once listening, records
    /// a live pid, refuses a second instance, and removes the file on SIGTERM.
    @Test func seedCommandLine_withPidfile_daemonizesAndCleansUp() throws {
        let backend = try RelayTests.echoServer()
        let directory = TemporaryDirectory()
        let pidfile = "\(directory.path)/tcp-cross-http.pid"
        let probe = try TestServer(host: "::1", accepting: false) { _ in }
        let port = probe.port
        probe.stop()
        let arguments = ["--local", "[::]:\(port)", "--remote", "127.0.0.1:\(backend.port)", "--pidfile=\(pidfile)"]

        let first = try Self.run(arguments)
        #expect(first.status == 0, "\(first.error)")
        // Started as root without --user (as the old tool was), it says so once, on the terminal, before detaching.
        if getuid() == 0 {
            #expect(first.error.split(separator: "\n").count == 1, "\(first.error)")
            #expect(first.error.hasPrefix("running as root with no --user: "), "\(first.error)")
        } else {
            #expect(first.error.isEmpty, "\(first.error)")
        }
        let text = try String(contentsOfFile: pidfile, encoding: .utf8)
        let pid = try #require(pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        defer { kill(pid, SIGKILL) }
        #expect(Self.isRunning(pid))

        // The daemon relays already: the command returned only once it was listening.
        let connection = try TestSocket.connect(to: .ipv6("::1", port))
        try connection.send("ping")
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == Array("ping".utf8))

        let second = try Self.run(arguments)
        #expect(second.status == 75)
        #expect(second.error == "tcp-crossover: already running (pid \(pid)): \(pidfile) is locked\n")
        #expect(Self.isRunning(pid))

        kill(pid, SIGTERM)
        #expect(eventually { !Self.isRunning(pid) })
        #expect(!FileManager.default.fileExists(atPath: pidfile))
    }

    /// The pidfile is written as root, often in a directory others can write to: a symbolic link (to a file, or to
    /// one that does not exist yet), another name of a file (a hard link) or a FIFO planted at its path is refused
    /// with one line and the pidfile's exit status, and what it leads to is left as it was.
    @Test(arguments: ["symbolic link", "dangling symbolic link", "hard link", "fifo"])
    func pidfile_whenNotAPlainFileOfItsOwn_isRefusedAndWhatItLeadsToIsLeftAlone(kind: String) throws {
        let directory = TemporaryDirectory()
        let target = "\(directory.path)/precious"
        if kind != "dangling symbolic link" {
            try "precious\n".write(toFile: target, atomically: false, encoding: .utf8)
        }
        let pidfile = "\(directory.path)/relay.pid"
        let planted: Int32
        switch kind {
        case "hard link": planted = link(target, pidfile)
        case "fifo": planted = mkfifo(pidfile, 0o644)
        default: planted = symlink(target, pidfile)
        }
        try #require(planted == 0)
        let result = try Self.run(
            ["--local", "127.0.0.1:0", "--remote", "127.0.0.1:1", "--foreground", "--pidfile", pidfile])
        let problem =
            switch kind {
            case "hard link": "has other names (hard links): refused"
            case "fifo": "is not a regular file: refused"
            default: "is a symbolic link: refused, a pidfile is never followed"
            }
        #expect(result.status == 73, "\(result.error)")
        #expect(result.error == "tcp-crossover: the pidfile \(pidfile) \(problem)\n")
        if kind == "dangling symbolic link" {
            #expect(!FileManager.default.fileExists(atPath: target))
        } else if kind != "fifo" {
            #expect(try String(contentsOfFile: target, encoding: .utf8) == "precious\n")
        }
    }

    @Test func pidfile_whenStaleAndUnlocked_isTakenOver() throws {
        let backend = try RelayTests.echoServer()
        let directory = TemporaryDirectory()
        let pidfile = "\(directory.path)/stale.pid"
        try "999999\n".write(toFile: pidfile, atomically: true, encoding: .utf8)
        let relay = try Relay(
            local: ["127.0.0.1:0"], remote: backend.address.description, ["--pidfile", pidfile])
        #expect(try String(contentsOfFile: pidfile, encoding: .utf8) == "\(relay.process.pid)\n")
        #expect(relay.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: pidfile))
    }

    @Test func background_whenBindFails_commandReportsItAndExitsNonZero() throws {
        let holder = try TestServer(host: "127.0.0.1", accepting: false) { _ in }
        let result = try Self.run(["--local", "127.0.0.1:\(holder.port)", "--remote", "127.0.0.1:1"])
        #expect(result.status == 69)
        #expect(result.error == "tcp-crossover: bind to 127.0.0.1:\(holder.port) failed: Address already in use\n")
    }

    /// The reason this tool exists: an IPv4-only daemon holds 0.0.0.0:P, and the relay binds [::]:P beside it.
    @Test func ipv6Listener_besideIPv4DaemonOnTheSamePort_startsAndRelays() throws {
        let daemon = try TestServer(host: "0.0.0.0") { connection in
            try connection.send("220 legacy IPv4 daemon\r\n")
            try connection.shutdownWrite()
        }
        let relay = try Relay(local: ["[::]:\(daemon.port)"], remote: "127.0.0.1:\(daemon.port)")
        #expect(relay.listening == ["[::]:\(daemon.port)"])
        let overIPv6 = try TestSocket.connect(to: .ipv6("::1", daemon.port))
        #expect(try overIPv6.receiveAll() == Array("220 legacy IPv4 daemon\r\n".utf8))
        overIPv6.close()
        let overIPv4 = try TestSocket.connect(to: .ipv4("127.0.0.1", daemon.port))
        #expect(try overIPv4.receiveAll() == Array("220 legacy IPv4 daemon\r\n".utf8))
        #expect(daemon.accepted == 2)
        #expect(eventually { relay.connectionLines.count == 1 })
    }

    @Test func dualStack_acceptsIPv4ClientsOnAnIPv6Listener() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(local: ["[::]:0"], remote: backend.address.description, ["--dual-stack"])
        let connection = try TestSocket.connect(to: .ipv4("127.0.0.1", relay.address.port))
        try connection.send("mapped")
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == Array("mapped".utf8))
        #expect(eventually { relay.connectionLines.first?.hasPrefix("[::ffff:127.0.0.1]:") == true })
    }

    @Test func remoteHostName_isResolvedAtStart() throws {
        let backend = try RelayTests.echoServer()
        let relay = try Relay(local: ["127.0.0.1:0"], remote: "localhost:\(backend.port)")
        #expect(
            relay.process.standardError.contains("relaying to localhost:\(backend.port) (127.0.0.1:\(backend.port)"))
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send("by name")
        try connection.shutdownWrite()
        #expect(try connection.receiveAll() == Array("by name".utf8))
    }

    @Test(arguments: [
        (["--local", "[::1]:80"], "--remote is missing: give the address to relay to"),
        (["--remote", "127.0.0.1:80"], "nothing to listen on: give --local ADDRESS:PORT"),
        (["--local", "::1:80", "--remote", "127.0.0.1:80"], "needs brackets: write [::1]:80"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:0"], "the port 0 is out of range (1-65535)"),
        (["--local", "[::1]:70000", "--remote", "127.0.0.1:80"], "the port 70000 is out of range (0-65535)"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--bs", "12"], "--bs '12' is not a size"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--bs", "1g"], "--bs '1g' is not a size"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--pipe-memory", "lots"], "--pipe-memory 'lots' is not"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--connect-timeout=-1"], "--connect-timeout '-1'"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--connect-timeout", "soon"], "--connect-timeout 'soon'"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--frobnicate"], "Unknown option '--frobnicate'"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--pidfile="], "Missing value for '--pidfile <file>'"),
        (["--local", "[fe80::1%nosuch0]:80", "--remote", "127.0.0.1:80"], "no network interface 'nosuch0'"),
        (["--local", "[::1]:80", "--remote", "127.0.0.1:80", "--threads", "5000"], "--threads '5000' is out of range"),
    ])
    func badInput_getsOneLineAndStatus64(arguments: [String], message: String) throws {
        let result = try Self.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.hasPrefix("tcp-crossover: "), "\(result.error)")
        #expect(result.error.contains(message), "\(result.error)")
        #expect(result.error.filter { $0 == "\n" }.count == 1, "\(result.error)")
        #expect(result.output.isEmpty)
    }

    @Test func unresolvableRemote_failsAtStartWithStatus68() throws {
        let result = try Self.run(["--local", "127.0.0.1:0", "--remote", "no-such-host.invalid:25", "-f"])
        #expect(result.status == 68)
        #expect(result.error.hasPrefix("tcp-crossover: cannot resolve no-such-host.invalid: "), "\(result.error)")
    }

    @Test func helpAndVersion_printToStandardOutputAndExitZero() throws {
        let help = try Self.run(["--help"])
        #expect(help.status == 0)
        for option in [
            "--local", "--remote", "--pidfile", "--bs", "--debug", "--foreground", "--dual-stack",
            "--connect-timeout", "--version",
        ] {
            #expect(help.output.contains(option), "\(option) missing from --help")
        }
        let version = try Self.run(["--version"])
        #expect(version.status == 0)
        #expect(version.output.split(separator: ".").count == 3)
    }
}
