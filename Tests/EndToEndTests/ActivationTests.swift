import Foundation
import Glibc
import Testing

/// The modes the service manager starts: systemd socket activation (listening socket, `Accept=yes`, inetd style)
/// through the real `systemd-socket-activate`, and a real xinetd running the shipped entry.
@Suite struct ActivationTests {
    static let socketActivate = "/usr/bin/systemd-socket-activate"

    /// A port that was free a moment ago, for tools that bind it themselves. It is picked below the kernel's range of
    /// ephemeral ports: a port the kernel picks for a listener (port 0) comes from that range, from which every
    /// connection the tests running beside this one make takes its local port too, and one could take it between
    /// this probe and the tool's own bind. Below the range only another test's choice of a port can collide.
    static func freePort(host: String = "::1") throws -> UInt16 {
        let ephemeralStart = ephemeralPortRangeStart()
        if ephemeralStart > 10_001 {
            for _ in 0..<50 {
                let candidate = UInt16.random(in: 10_000..<ephemeralStart)
                if let probe = try? TestServer(host: host, port: candidate, accepting: false, handler: { _ in }) {
                    probe.stop()
                    return candidate
                }
            }
        }
        let probe = try TestServer(host: host, accepting: false) { _ in }
        defer { probe.stop() }
        return probe.port
    }

    /// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, for IPv6 too); 0 when unread.
    static func ephemeralPortRangeStart() -> UInt16 {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        return text.split(whereSeparator: \.isWhitespace).first.flatMap { UInt16($0) } ?? 0
    }

    /// A listener on 0.0.0.0 (not accepting) on a port that was free on [::] too when it was chosen: a port probed on
    /// one family can be taken on the other (by a connection from 127.0.0.1 that another test makes), so the kernel
    /// picks the IPv4 port and the IPv6 side is checked.
    static func ipv4ListenerWithItsPortFreeOnIPv6() throws -> TestServer {
        for _ in 0..<20 {
            let holder = try TestServer(host: "0.0.0.0", accepting: false) { _ in }
            if let probe = try? TestServer(host: "::", port: holder.port, accepting: false, handler: { _ in }) {
                probe.stop()
                return holder
            }
            holder.stop()
        }
        throw TestFailure(message: "no port was free on both 0.0.0.0 and [::] in 20 tries")
    }

    /// A server that sends a banner, then echoes, then ends its side when the client ends.
    static func bannerEchoServer() throws -> TestServer {
        try TestServer { connection in
            try connection.send("220 ready\r\n")
            while true {
                let chunk = try connection.receive()
                if chunk.isEmpty { break }
                try connection.send(chunk)
            }
            try connection.shutdownWrite()
        }
    }

    /// One exchange through the relay: the banner, then `payload` echoed.
    static func exchange(_ address: TestAddress, _ payload: [UInt8]) throws -> [UInt8] {
        let connection = try TestSocket.connect(to: address)
        try connection.send(payload)
        try connection.shutdownWrite()
        return try connection.receiveAll()
    }

    static func connectWhenListening(_ address: TestAddress) throws -> TestSocket {
        var lastError: Error?
        for _ in 0..<200 {
            do {
                return try TestSocket.connect(to: address)
            } catch {
                lastError = error
                usleep(20_000)
            }
        }
        throw lastError!
    }

    @Test func socketActivation_withListeningSocket_relaysAndNotifiesTheServiceManager() throws {
        let backend = try Self.bannerEchoServer()
        let notify = try NotifySocket()
        let port = try Self.freePort()
        let activator = try ChildProcess(
            Self.socketActivate,
            [
                "-l", "[::1]:\(port)", "--fdname=smtp", "-E", "NOTIFY_SOCKET=\(notify.path)",
                relayBinary, "--remote", backend.address.description,
            ])
        let first = try Self.connectWhenListening(.ipv6("::1", port))
        try first.send("EHLO one\r\n")
        try first.shutdownWrite()
        #expect(try first.receiveAll() == Array("220 ready\r\nEHLO one\r\n".utf8))
        #expect(notify.waitFor("READY=1"), "no READY=1: \(notify.messages)")
        #expect(try Self.exchange(.ipv6("::1", port), Array("two".utf8)) == Array("220 ready\r\ntwo".utf8))
        #expect(activator.waitForError(containing: "serving [::1]:\(port) (smtp), relaying to \(backend.address)"))
        #expect(notify.waitFor("STATUS=0 active, 2 accepted, 0 refused, 0 failed connects"), "\(notify.messages)")
        activator.kill(signal: SIGTERM)
        #expect(activator.waitForExit() == 0)
        #expect(notify.waitFor("STOPPING=1"), "\(notify.messages)")
    }

    /// With WatchdogSec= systemd sets WATCHDOG_USEC; the service must ping at least that often.
    @Test func socketActivation_withWatchdog_pingsTheServiceManager() throws {
        let backend = try Self.bannerEchoServer()
        let notify = try NotifySocket()
        let port = try Self.freePort()
        let activator = try ChildProcess(
            Self.socketActivate,
            [
                "-l", "[::1]:\(port)", "-E", "NOTIFY_SOCKET=\(notify.path)", "-E", "WATCHDOG_USEC=400000",
                relayBinary, "--remote", backend.address.description,
            ])
        let connection = try Self.connectWhenListening(.ipv6("::1", port))
        #expect(try connection.receive(exactly: 11) == Array("220 ready\r\n".utf8))
        // Pings at half the interval: several within a second.
        #expect(eventually(timeout: 5) { notify.messages.filter { $0.contains("WATCHDOG=1") }.count >= 3 })
        connection.close()
        activator.kill(signal: SIGTERM)
        #expect(activator.waitForExit() == 0)
    }

    @Test func socketActivation_withAcceptYes_relaysEachConnectionInItsOwnProcess() throws {
        let backend = try Self.bannerEchoServer()
        let port = try Self.freePort()
        let activator = try ChildProcess(
            Self.socketActivate,
            ["-l", "[::1]:\(port)", "--accept", relayBinary, "--remote", backend.address.description])
        _ = try Self.connectWhenListening(.ipv6("::1", port))
        for index in 0..<3 {
            let payload = testBytes(100_000, seed: UInt64(index))
            #expect(try Self.exchange(.ipv6("::1", port), payload) == Array("220 ready\r\n".utf8) + payload)
        }
        #expect(activator.waitForError(containing: "100000 bytes up, 100011 bytes down"))
        // Every relay process exited 0 once its connection ended.
        #expect(eventually { activator.standardError.components(separatedBy: "died with code 0").count == 5 })
        #expect(!activator.standardError.contains("died with code 1"))
    }

    /// Under inetd, standard output and error are the client's socket: even with --debug the client must receive
    /// exactly the bytes the backend sent, and nothing else.
    @Test func inetdStyle_clientReceivesExactlyTheBackendBytes() throws {
        let backend = try Self.bannerEchoServer()
        let port = try Self.freePort()
        let activator = try ChildProcess(
            Self.socketActivate,
            [
                "-l", "[::1]:\(port)", "--accept", "--inetd", relayBinary, "--debug", "--remote",
                backend.address.description,
            ])
        _ = try Self.connectWhenListening(.ipv6("::1", port))
        let payload = testBytes(300_000, seed: 9)
        #expect(try Self.exchange(.ipv6("::1", port), payload) == Array("220 ready\r\n".utf8) + payload)
        let quiet = try Self.exchange(.ipv6("::1", port), [])
        #expect(quiet == Array("220 ready\r\n".utf8))
        #expect(eventually { activator.standardError.components(separatedBy: "died with code 0").count == 4 })
    }

    @Test func socketActivation_withExitIdleTime_exitsWhenIdle() throws {
        let backend = try Self.bannerEchoServer()
        let port = try Self.freePort()
        let activator = try ChildProcess(
            Self.socketActivate,
            ["-l", "[::1]:\(port)", relayBinary, "--remote", backend.address.description, "--exit-idle-time", "0.5"])
        let connection = try Self.connectWhenListening(.ipv6("::1", port))
        // An open connection keeps it running past the idle time.
        Thread.sleep(forTimeInterval: 1)
        #expect(activator.exitStatus() == nil)
        try connection.shutdownWrite()
        _ = try connection.receiveAll()
        #expect(activator.waitForExit(timeout: 5) == 0)
        #expect(activator.standardError.contains("no connection for 0.5 s: exiting (--exit-idle-time)"))
    }

    @Test func journalStream_givesPriorityPrefixes() throws {
        let backend = try Self.bannerEchoServer()
        // JOURNAL_STREAM names standard error's device and inode, as systemd sets it.
        let process = try ChildProcess(
            "/bin/sh",
            [
                "-c",
                "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\" \"$@\"", relayBinary,
                "--local", "[::1]:0", "--remote", backend.address.description, "--foreground",
            ])
        #expect(process.waitForError(containing: "<5>tcp-crossover "))
        let line = process.standardError.split(separator: "\n").first { $0.contains("listening on") } ?? ""
        let port = UInt16(line.components(separatedBy: "]:")[1].prefix { $0.isNumber })!
        _ = try Self.exchange(.ipv6("::1", port), Array("x".utf8))
        #expect(process.waitForError(containing: "<6>[::1]:"))
        process.kill(signal: SIGTERM)
        #expect(process.waitForExit() == 0)
    }

    @Test func xinetd_runningTheShippedEntry_relaysTenConnections() throws {
        let backend = try Self.bannerEchoServer()
        // The shipped entry binds [::] IPv6-only: it starts beside an IPv4 daemon on the same port.
        let ipv4Holder = try Self.ipv4ListenerWithItsPortFreeOnIPv6()
        defer { ipv4Holder.stop() }
        let port = ipv4Holder.port
        let directory = TemporaryDirectory()
        let shipped = try String(contentsOfFile: repositoryPath("xinetd/tcp-crossover-smtp"), encoding: .utf8)
        let config =
            shipped
            .replacingOccurrences(of: "disable\t\t= yes", with: "disable\t\t= no")
            .replacingOccurrences(of: "/usr/bin/tcp-crossover", with: relayBinary)
            .replacingOccurrences(
                of: "--remote 127.0.0.1:10125 --proxy-protocol v2", with: "--remote \(backend.address)"
            )
            .replacingOccurrences(of: "port\t\t= 25", with: "port\t\t= \(port)\n\ttype\t\t= UNLISTED")
        #expect(config.contains("server_args\t= --remote \(backend.address)\n"), "\(config)")
        let configPath = "\(directory.path)/xinetd.conf"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let logPath = "\(directory.path)/xinetd.log"
        let xinetd = try ChildProcess(
            "/usr/sbin/xinetd",
            [
                "-dontfork", "-pidfile", "\(directory.path)/xinetd.pid", "-filelog", logPath,
                "-f", configPath,
            ])
        _ = try Self.connectWhenListening(.ipv6("::1", port))
        for index in 0..<10 {
            let payload = testBytes(10_000 * (index + 1), seed: UInt64(index))
            #expect(try Self.exchange(.ipv6("::1", port), payload) == Array("220 ready\r\n".utf8) + payload)
        }
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        #expect(log.contains("Started working: 1 available service"), "\(log)")
        #expect(!log.contains("ERROR"), "\(log)")
        xinetd.kill(signal: SIGTERM)
        _ = xinetd.waitForExit()
    }

    @Test(arguments: [
        (["--local", "[::1]:0"], "-l", "--local cannot be used with the 1 socket(s) systemd passed"),
        ([], "--datagram", "is not a stream socket; tcp-crossover relays TCP"),
    ])
    func socketActivation_withUnusableSockets_refusesWithStatus64(extra: [String], flag: String, message: String)
        throws
    {
        let port = try Self.freePort()
        let listen = flag == "-l" ? ["-l", "[::1]:\(port)"] : ["--datagram", "-l", "[::1]:\(port)"]
        let activator = try ChildProcess(
            Self.socketActivate, listen + [relayBinary, "--remote", "127.0.0.1:1"] + extra)
        // systemd-socket-activate starts the program at the first packet or connection.
        if flag == "-l" {
            _ = try? Self.connectWhenListening(.ipv6("::1", port))
        } else {
            for _ in 0..<100 where activator.exitStatus() == nil {
                let udp = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
                let address = TestAddress.ipv6("::1", port)
                _ = address.withSockAddr { sendto(udp, "x", 1, 0, $0, $1) }
                close(udp)
                usleep(20_000)
            }
        }
        #expect(activator.waitForExit() == 64)
        #expect(activator.standardError.contains(message), "\(activator.standardError)")
    }

    @Test func inheritedDescriptorThatIsNoSocket_isRefusedWithStatus64() throws {
        let process = try ChildProcess(
            "/bin/sh",
            ["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --remote 127.0.0.1:1 3</dev/null", relayBinary])
        #expect(process.waitForExit() == 64)
        #expect(process.standardError.contains("descriptor 3 passed by systemd is not a socket"))
    }

    @Test func datagramSocketOnStandardInput_isRefusedWithStatus64() throws {
        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(udp) }
        let process = try ChildProcess(relayBinary, ["--remote", "127.0.0.1:1"], standardInput: udp)
        #expect(process.waitForExit() == 64)
    }

    @Test func nothingToListenOn_namesTheThreeWaysToStart() throws {
        let process = try ChildProcess(relayBinary, ["--remote", "127.0.0.1:1"])
        #expect(process.waitForExit() == 64)
        #expect(
            process.standardError
                == "tcp-crossover: nothing to listen on: give --local ADDRESS:PORT to listen yourself, or start "
                + "tcp-crossover from a systemd socket unit or from inetd/xinetd, which pass the sockets\n")
    }
}

/// An AF_UNIX datagram socket bound at a temporary path, standing in for systemd's notification socket.
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var received: [String] = []

    init() throws {
        path = "/tmp/tcx-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else { throw TestFailure("bind \(path)") }
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if count <= 0 { return }
                let text = String(decoding: buffer[0..<count], as: UTF8.self)
                lock.withLock { received.append(text) }
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
    }

    var messages: [String] { lock.withLock { received } }

    /// Waits for a message with a line that starts with `prefix`.
    func waitFor(_ prefix: String, timeout: Double = 10) -> Bool {
        eventually(timeout: timeout) {
            messages.contains { $0.split(separator: "\n").contains { $0.hasPrefix(prefix) } }
        }
    }
}

/// A fresh directory, removed afterwards.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/tcp-crossover-test-XXXXXX".utf8CString)
        path = String(cString: mkdtemp(&template)!)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A file of this repository, found from this source file's path.
func repositoryPath(_ relative: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(relative).path
}
