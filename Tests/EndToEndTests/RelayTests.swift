import Foundation
import Glibc
import Testing

/// The built binary, relaying real bytes over loopback.
@Suite struct RelayTests {
    /// A server that echoes everything it receives, then ends its side when the client ends.
    static func echoServer(host: String = TestAddress.loopback4) throws -> TestServer {
        try TestServer(host: host) { connection in
            while true {
                let chunk = try connection.receive(upTo: 1 << 20)
                if chunk.isEmpty { break }
                try connection.send(chunk)
            }
            try connection.shutdownWrite()
        }
    }

    @Test(arguments: [(AF_INET, AF_INET), (AF_INET, AF_INET6), (AF_INET6, AF_INET), (AF_INET6, AF_INET6)])
    func relay_inEveryFamilyCombination_echoesOneMebibyteByteForByte(client: Int32, server: Int32) throws {
        let backend = try Self.echoServer(host: server == AF_INET ? TestAddress.loopback4 : TestAddress.loopback6)
        let relay = try Relay(family: client, remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        let data = testBytes(1 << 20, seed: UInt64(client * 100 + server))
        let sender = Thread {
            try? connection.send(data); try? connection.shutdownWrite()
        }
        sender.start()
        let echoed = try connection.receiveAll()
        #expect(echoed.count == data.count)
        #expect(echoed == data, "the echoed bytes differ")
        #expect(eventually { relay.connectionLines.count == 1 })
        let line = relay.connectionLines.first ?? ""
        #expect(line.contains("1048576 bytes up, 1048576 bytes down"), "\(line)")
        #expect(line.contains("-> \(backend.address)"), "\(line)")
        #expect(line.contains("end=client-closed"), "\(line)")
        #expect(relay.stop() == 0)
    }

    @Test func relay_withTwentyConcurrentConnections_keepsEachStreamApart() throws {
        let backend = try Self.echoServer()
        let relay = try Relay(remote: backend.address)
        let results = Results()
        let group = onThreads(20) { index in
            do {
                let connection = try TestSocket.connect(to: relay.address)
                let data = testBytes(100_000 + index * 1000, seed: UInt64(index))
                for start in stride(from: 0, to: data.count, by: 7000) {
                    try connection.send(Array(data[start..<min(start + 7000, data.count)]))
                }
                try connection.shutdownWrite()
                results.record(try connection.receiveAll() == data)
            } catch {
                results.record(false)
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success)
        #expect(results.successes == 20)
        #expect(backend.mostActive > 1)
    }

    @Test func relay_whenClientHalfCloses_serverReplyStillArrives() throws {
        // The server reads the whole request, then answers after the client's end of stream.
        let backend = try TestServer { connection in
            let request = try connection.receiveAll()
            Thread.sleep(forTimeInterval: 0.2)
            try connection.send(Array("got \(request.count) bytes".utf8) + testBytes(300_000, seed: 3))
            try connection.shutdownWrite()
        }
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send(testBytes(50_000, seed: 2))
        try connection.shutdownWrite()
        let reply = try connection.receiveAll()
        #expect(reply.starts(with: Array("got 50000 bytes".utf8)))
        #expect(reply.count == "got 50000 bytes".utf8.count + 300_000)
        #expect(eventually { relay.connectionLines.first?.contains("end=client-closed") == true })
    }

    @Test func relay_whenServerHalfCloses_clientBytesStillArrive() throws {
        // The server says hello, ends its side at once, and goes on reading until the client ends.
        let received = Results()
        let backend = try TestServer { connection in
            try connection.send("hello\n")
            try connection.shutdownWrite()
            let bytes = try connection.receiveAll()
            received.record(bytes == testBytes(200_000, seed: 4))
        }
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        #expect(try connection.receiveAll() == Array("hello\n".utf8))
        // After the server's FIN has arrived, the client goes on sending.
        try connection.send(testBytes(200_000, seed: 4))
        try connection.shutdownWrite()
        #expect(connection.waitForEnding() == .endOfStream)
        #expect(eventually { received.successes == 1 })
        #expect(eventually { relay.connectionLines.first?.contains("end=server-closed") == true })
    }

    @Test func relay_whenRemoteRefuses_closesClientAndLogsTheReason() throws {
        // A port with nothing listening: bind one, read its number, close it.
        let unused = try TestServer(accepting: false) { _ in }
        let address = unused.address
        unused.stop()
        let relay = try Relay(remote: address)
        let connection = try TestSocket.connect(to: relay.address)
        let ending = connection.waitForEnding()
        #expect(ending == .reset)
        #expect(eventually { relay.connectionLines.count == 1 })
        #expect(relay.connectionLines.first?.contains("connect to \(address) failed: Connection refused") == true)
    }

    @Test func relay_whenRemoteDoesNotAnswer_givesUpAfterTheConnectTimeout() throws {
        // A listener whose backlog is full drops further handshakes: a black hole on loopback.
        let blackHole = try TestServer(backlog: 0, accepting: false) { _ in }
        var fillers: [TestSocket] = []
        for _ in 0..<8 {
            if let socket = try? TestSocket.connect(to: blackHole.address, timeout: 0.3) { fillers.append(socket) }
        }
        let relay = try Relay(remote: blackHole.address, ["--connect-timeout", "0.5"])
        let started = Date()
        let connection = try TestSocket.connect(to: relay.address)
        #expect(connection.waitForEnding() == .reset)
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed >= 0.4 && elapsed < 5, "gave up after \(elapsed) s")
        #expect(eventually { relay.connectionLines.first?.contains("timed out after 0.5 s") == true })
        _ = fillers
    }

    /// What a client sent before the relay accepted it (it waited in the backlog, here behind `--max-connections 1`)
    /// is read at accept and reaches the server first, its FIN after it; a client that reset while waiting is never
    /// connected to the server.
    @Test func relay_clientsThatActedInTheBacklog_areServedOrDroppedAtAccept() throws {
        let backend = try Self.echoServer()
        let relay = try Relay(remote: backend.address, ["--max-connections", "1", "--threads", "1"])
        let holder = try TestSocket.connect(to: relay.address)
        try holder.send("hold")
        #expect(try holder.receive(exactly: 4) == Array("hold".utf8))
        // Both complete their handshake in the kernel and wait for the relay to accept them.
        let resetting = try TestSocket.connect(to: relay.address)
        resetting.reset()
        let early = try TestSocket.connect(to: relay.address)
        try early.send("sent before the accept")
        try early.shutdownWrite()
        Thread.sleep(forTimeInterval: 0.2)
        #expect(backend.accepted == 1)
        holder.close()
        #expect(try early.receiveAll() == Array("sent before the accept".utf8))
        #expect(eventually { relay.connectionLines.count == 3 })
        // The holder and the early client reached the server; the one that reset did not.
        #expect(backend.accepted == 2)
        let lines = relay.connectionLines
        #expect(
            lines.contains { $0.contains("-> -: 0 bytes up, 0 bytes down") && $0.contains("end=client-reset") },
            "\(lines)")
        #expect(lines.contains { $0.contains("22 bytes up, 22 bytes down") && $0.contains("end=client-closed") })
    }

    /// With a pause, the relay has passed the bytes on before the reset comes; without one, the bytes and the reset
    /// reach the relay together (EPOLLIN, EPOLLRDHUP and EPOLLERR at once), and the hang-up must not be taken for a
    /// FIN: the client gets the bytes, then a reset, never a clean end.
    @Test(arguments: [0.1, 0])
    func relay_whenRemoteResets_resetsTheClient(pauseBeforeReset: Double) throws {
        let backend = try TestServer { connection in
            _ = try connection.receive()
            try connection.send("partial")
            if pauseBeforeReset > 0 { Thread.sleep(forTimeInterval: pauseBeforeReset) }
            connection.reset()
        }
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send("request")
        var received: [UInt8] = []
        var ending = TestSocket.Ending.timedOut
        while true {
            do {
                let chunk = try connection.receive()
                if chunk.isEmpty {
                    ending = .endOfStream
                    break
                }
                received += chunk
            } catch {
                ending = errno == ECONNRESET ? .reset : .other(errno)
                break
            }
        }
        #expect(ending == .reset)
        #expect(received == Array("partial".utf8))
        #expect(eventually { relay.connectionLines.first?.contains("end=server-reset: Connection reset") == true })
    }

    /// TCP urgent data (Telnet's and FTP's Synch, rlogin's control bytes) is passed on as urgent data, in its
    /// place, both ways: the relay reads it in line (SO_OOBINLINE) and sends it with MSG_OOB, and a receive that
    /// the urgent mark stopped short does not leave the bytes behind the mark waiting, whether or not a FIN
    /// follows them.
    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func relay_urgentData_isPassedOnAsUrgentInItsPlace(fromServer: Bool, thenEnd: Bool) throws {
        let atServer = ByteLog()
        let backend = try TestServer { connection in
            if fromServer {
                try connection.sendWithUrgentByte(before: "abc", urgent: UInt8(ascii: "!"), after: "def")
                if thenEnd { try connection.shutdownWrite() }
            } else {
                let (bytes, mark) = try connection.receiveWithUrgentMark(7)
                atServer.record(bytes, mark: mark)
            }
            _ = try? connection.receiveAll()
        }
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address, timeout: 5)
        if fromServer {
            let (bytes, mark) = try connection.receiveWithUrgentMark(7)
            #expect(bytes == Array("abc!def".utf8))
            #expect(mark == 3)
            if thenEnd { #expect(try connection.receive().isEmpty) }
        } else {
            try connection.sendWithUrgentByte(before: "abc", urgent: UInt8(ascii: "!"), after: "def")
            if thenEnd { try connection.shutdownWrite() }
            #expect(eventually(timeout: 5) { atServer.bytes.count >= 7 })
            #expect(atServer.bytes == Array("abc!def".utf8))
            #expect(atServer.mark == 3)
        }
    }

    @Test func relay_whenClientResetsDuringLargeDownload_livesOnForOthers() throws {
        let backend = try TestServer { connection in
            let request = try connection.receive()
            if request == Array("big".utf8) {
                // Sends until the relay passes the client's reset on.
                let block = testBytes(1 << 20, seed: 5)
                while true { try connection.send(block) }
            }
            try connection.send("small")
            try connection.shutdownWrite()
        }
        let relay = try Relay(remote: backend.address)
        let downloader = try TestSocket.connect(to: relay.address)
        try downloader.send("big")
        _ = try downloader.receive(exactly: 3 << 20)
        downloader.reset()
        #expect(eventually { relay.connectionLines.first?.contains("end=client-reset") == true })
        #expect(eventually { backend.failures.count == 1 }, "the server was not reset")
        let next = try TestSocket.connect(to: relay.address)
        try next.send("hello")
        #expect(try next.receiveAll() == Array("small".utf8))
        #expect(relay.process.exitStatus() == nil)
    }

    @Test func relay_afterThreeHundredConnections_holdsNoMoreDescriptorsThanAtStart() throws {
        let backend = try Self.echoServer()
        let relay = try Relay(remote: backend.address, ["--threads", "2"])
        // One connection first, so that lazily made resources (pipes in the pool) are counted in the baseline.
        for size in [10, 200_000] {
            let connection = try TestSocket.connect(to: relay.address)
            try connection.send(testBytes(size))
            try connection.shutdownWrite()
            _ = try connection.receiveAll()
        }
        #expect(eventually { relay.connectionLines.count == 2 })
        let baseline = relay.process.openDescriptors
        for index in 0..<300 {
            let connection = try TestSocket.connect(to: relay.address)
            switch index % 3 {
            case 0:
                try connection.send(testBytes(300_000, seed: UInt64(index)))
                try connection.shutdownWrite()
                _ = try connection.receiveAll()
            case 1:
                try connection.send("x")
                _ = try connection.receive()
                connection.reset()
            default:
                try connection.shutdownWrite()
                _ = try connection.receiveAll()
            }
        }
        #expect(eventually { relay.connectionLines.count == 302 })
        let settled = eventually { relay.process.openDescriptors <= baseline }
        #expect(settled, "\(relay.process.openDescriptors) descriptors open, \(baseline) at the start")
        // Every descriptor the relay opened itself is close-on-exec.
        let inherited = relay.process.descriptorsWithoutCloseOnExec.filter { $0 > 2 }
        #expect(inherited.isEmpty, "descriptors without O_CLOEXEC: \(inherited)")
    }

    /// A client that reads nothing makes the relay stop reading from the server: the server's writes block once
    /// the socket buffers and one pipe are full, and nothing is lost once the client reads again.
    @Test func relay_whenClientDoesNotRead_serverIsSlowedDown() throws {
        // What the kernel may hold at most: the server's send buffer, the relay's receive and send buffers, the
        // client's receive buffer (each as large as autotuning lets it grow), and the relay's one 1 MiB pipe. The
        // server offers 16 MiB more than that, so reaching its end means the relay buffered without bound.
        func largest(_ sysctl: String) -> Int {
            let values = readWholeFile("/proc/sys/net/ipv4/\(sysctl)")?.split(whereSeparator: \.isWhitespace)
            return Int(values?.last ?? "") ?? 0
        }
        let kernelHolds = 2 * largest("tcp_rmem") + 2 * largest("tcp_wmem") + (1 << 20)
        try #require(kernelHolds > 1 << 20, "tcp_rmem and tcp_wmem are readable")
        let offered = kernelHolds + (16 << 20)
        let sent = Counter()
        let backend = try TestServer { connection in
            _ = try connection.receive(exactly: 2)
            let block = testBytes(1 << 16, seed: 8)
            connection.setTimeout(3)
            for _ in 0..<(offered >> 16) {
                do {
                    try connection.send(block)
                } catch {
                    break  // the send timed out: the relay stopped taking bytes
                }
                sent.add(block.count)
            }
            try? connection.shutdownWrite()
        }
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        try connection.send("go")
        Thread.sleep(forTimeInterval: 1.5)
        let stalled = sent.value
        #expect(
            stalled <= kernelHolds,
            "the server sent \(stalled) bytes to a client that read nothing; the kernel holds \(kernelHolds) at most")
        let rss = Int(relay.process.status("VmRSS")?.split(separator: " ").first ?? "0") ?? 0
        #expect(rss < 64 * 1024, "relay RSS \(rss) kB")
        // Now the client reads everything the server managed to send, intact.
        let block = testBytes(1 << 16, seed: 8)
        var received = 0
        var intact = true
        while true {
            let chunk = try connection.receive(exactly: 1 << 16, orLess: true)
            if chunk.isEmpty { break }
            intact = intact && chunk == block
            received += chunk.count
        }
        #expect(intact)
        #expect(received == sent.value)
    }

    /// The server sends a response and closes its socket; the client, not done reading, sends more, which the
    /// server's machine answers with a reset. The client still reads the whole response and its end of stream, and
    /// only then learns that what it sent was lost: its next send fails.
    ///
    /// The response is 128 KiB and the client reads it a little at a time until the server's kernel has had its end
    /// of stream acknowledged (FIN_WAIT2; how much the relay and the client's socket take in depends on the machine),
    /// and only then sends: a reset from a server whose own send buffer still holds the response throws that away,
    /// through a relay or directly.
    @Test func relay_whenTheClientSendsToAServerThatHasClosed_itGetsTheWholeResponseThenAReset() throws {
        let response = testBytes(128 << 10, seed: 12)
        let closed = DispatchSemaphore(value: 0)
        let backend = try TestServer { connection in
            try connection.send(response)
            connection.close()
            closed.signal()
        }
        let relay = try Relay(remote: backend.address)
        let connection = try TestSocket.connect(to: relay.address)
        var received = try connection.receive(exactly: 1000)
        let backendEnd = backend.address.procNetTCP
        var serverClosed = false
        connection.setTimeout(0.05)
        let delivered = eventually(timeout: 30) {
            serverClosed = serverClosed || closed.wait(timeout: .now()) == .success
            let lines = readWholeFile("/proc/net/tcp")?.split(separator: "\n") ?? []
            let finWait2 = lines.contains { line in
                let fields = line.split(separator: " ")
                return fields.count > 3 && fields[1] == backendEnd && fields[3] == "05"
            }
            if serverClosed && finWait2 { return true }
            if let chunk = try? connection.receive(upTo: 4096) { received += chunk }
            return false
        }
        connection.setTimeout(20)
        #expect(serverClosed, "the server could not hand over its response")
        #expect(delivered, "the relay took the whole response and the server's end of stream")
        #expect(received.count < response.count, "the client read the whole response before it sent")
        try connection.send("more")
        // The reset reaches the relay's socket to the server, which then leaves the kernel's table of connections.
        let relaySocketGone = eventually {
            let lines = readWholeFile("/proc/net/tcp")?.split(separator: "\n") ?? []
            return !lines.contains { $0.split(separator: " ").dropFirst(2).first.map(String.init) == backendEnd }
        }
        #expect(relaySocketGone)
        received += try connection.receiveAll()
        #expect(received.count == response.count)
        #expect(received == response, "the response differs")
        #expect(eventually { (try? connection.send("x")) == nil }, "the client is reset after the response")
        #expect(eventually { relay.connectionLines.first?.hasSuffix("end=server-reset: Broken pipe") == true })
    }

    /// A peer that sent 256 KiB and closed its socket is forgotten by its kernel (`tcp_fin_timeout`, lowered to 3 s
    /// in a network namespace of the test's own) while the other peer reads slowly and the relay holds the tail: the
    /// reader takes a little at a time only until the sender's kernel has had everything acknowledged (how much the
    /// relay and the reader's socket take in depends on the machine), then waits. A keepalive probe towards the
    /// forgotten peer (`--keepalive 1,1,1`) is answered with a reset. Whichever peer sent (the server, a download;
    /// the client, an upload), the reader still gets all of it and a clean end of stream, as over a direct
    /// connection.
    @Test(arguments: ["download", "upload"])
    func relay_whenTheFinishedSenderIsForgotten_theSlowReaderStillGetsEverything(direction: String) throws {
        try #require(getuid() == 0, "needs root for a network namespace")
        let process = try ChildProcess(
            "/usr/bin/unshare", ["-n", "/usr/bin/python3", "-c", Self.forgottenSenderScript, relayBinary, direction])
        #expect(process.waitForExit(timeout: 120) == 0, "\(process.standardOutput)\(process.standardError)")
        #expect(process.standardOutput.contains("the relay held"), "\(process.standardOutput)")
        #expect(process.standardOutput.contains("sender forgotten"), "\(process.standardOutput)")
        #expect(
            process.standardOutput.contains("received 262144 of 262144 bytes, intact True, end of stream"),
            "\(process.standardOutput)\(process.standardError)")
        // The connection completed: nothing the reader sent was lost.
        let line = process.standardError.split(separator: "\n").first { $0.contains(" bytes up, ") } ?? ""
        let (bytes, first) = direction == "download" ? ("262144 bytes down", "server") : ("262144 bytes up", "client")
        #expect(line.contains(bytes) && line.hasSuffix("end=\(first)-closed"), "\(process.standardError)")
    }

    /// Run by `relay_whenTheFinishedSenderIsForgotten_…` in a new network namespace: RELAY download|upload. Prints
    /// what the reader received and how its stream ended; exits 2 when the setting it needs did not come about.
    static let forgottenSenderScript = #"""
        import ctypes, fcntl, os, signal, socket, subprocess, sys, termios, threading, time

        relay_binary, direction = sys.argv[1], sys.argv[2]
        SIZE = 256 << 10
        DATA = bytes(range(256)) * (SIZE // 256)
        libc = ctypes.CDLL(None, use_errno=True)

        def step(text):
            print(text, flush=True)

        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with open("/proc/sys/net/ipv4/tcp_fin_timeout", "w") as f:
            f.write("3")

        def tcp_entries():
            entries = []
            for path in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(path) as f:
                    for line in f.readlines()[1:]:
                        fields = line.split()
                        local, remote, state = fields[1], fields[2], fields[3]
                        entries.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16), state))
            return entries

        def state_of(ends):
            """The TCP state of the socket with these local and remote ports, None once the kernel forgot it."""
            return next((state for local, remote, state in tcp_entries() if (local, remote) == ends), None)

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server_port = listener.getsockname()[1]
        relay = subprocess.Popen(
            [relay_binary, "--local", "127.0.0.1:0", "--remote", "127.0.0.1:%d" % server_port, "--keepalive", "1,1,1",
             "--threads", "1", "--foreground"],
            stderr=subprocess.PIPE, preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))
        # Warnings (root without --user, a remote on this machine without PROXY) may come before the start line.
        line = ""
        while "listening on 127.0.0.1:" not in line:
            line = relay.stderr.readline().decode()
            if not line:
                sys.exit("the relay ended before it listened")
        relay_port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0].split()[0])
        threading.Thread(target=lambda: [sys.stderr.write(l.decode()) for l in relay.stderr], daemon=True).start()

        client = socket.create_connection(("127.0.0.1", relay_port))
        started = time.monotonic()
        server, _ = listener.accept()

        # The sender sends 256 KiB and closes its socket for good; the reader takes a little, then waits until the sender's
        # kernel has forgotten the finished connection (tcp_fin_timeout) and the relay's keepalive towards the sender has
        # had time to probe (set 10 s into a connection, then every second), and reads the rest.
        sender, reader = (server, client) if direction == "download" else (client, server)
        ends = (sender.getsockname()[1], sender.getpeername()[1])
        done = threading.Event()
        def send():
            sender.sendall(DATA)
            sender.close()
            done.set()
        threading.Thread(target=send, daemon=True).start()
        # How much the relay and the reader's socket take in depends on the machine (buffer sizes, segment overheads):
        # the reader reads a little at a time until the sender's kernel has had every byte and its end of stream
        # acknowledged (FIN_WAIT2), as a slow client would, so that the sender can be forgotten; by then the relay holds
        # the tail.
        received = bytearray()
        reader.settimeout(0.05)
        deadline = time.monotonic() + 60
        while not (done.is_set() and state_of(ends) in ("05", None)):
            if time.monotonic() > deadline:
                step("the sender could not hand over its %d bytes: %s, read %d" % (SIZE, state_of(ends), len(received)))
                sys.exit(2)
            try:
                received += reader.recv(4096)
            except socket.timeout:
                pass
            time.sleep(0.02)
        queued = bytearray(4)
        fcntl.ioctl(reader.fileno(), termios.FIONREAD, queued)
        held = SIZE - len(received) - int.from_bytes(queued, sys.byteorder)
        if held <= 0:
            step("the relay held nothing when the sender finished (the reader had read %d)" % len(received))
            sys.exit(2)
        step("the relay held %d bytes when the sender finished" % held)
        deadline = time.monotonic() + 60
        while state_of(ends) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if state_of(ends) is not None:
            step("the sender's side was never forgotten: %s" % [e for e in tcp_entries() if e[:2] == ends])
            sys.exit(2)
        step("sender forgotten after %.1f s" % (time.monotonic() - started))
        time.sleep(max(0, started + 14 - time.monotonic()))
        reader.settimeout(30)
        ending = "end of stream"
        try:
            while True:
                chunk = reader.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        except OSError as error:
            ending = "error: %s" % error
        step("received %d of %d bytes, intact %s, %s" % (len(received), SIZE, bytes(received) == DATA[:len(received)], ending))
        reader.close()
        time.sleep(0.5)
        relay.terminate()
        relay.wait(10)
        """#

    /// Clients that connect and never read pin little in the relay, whatever `--bs` allows: the pipe of each stalled
    /// direction stays near its starting size (it grows only while the pipe, not the client, holds the flow back),
    /// and the relay's socket towards the server gets a receive buffer in proportion (SO_RCVBUF) instead of one that
    /// autotuning grows towards tcp_rmem's maximum, so that the server's data waits in the server's send buffer.
    /// A direction whose client stopped while it still copied holds the rest of its last receive in a buffer (at
    /// most 64 KiB, `RelayStateTests`) and no pipe, with the same bounds on its sockets. The pipes are read through
    /// /proc/PID/fd (F_GETPIPE_SZ, FIONREAD), the sockets with `ss -tm` and `ss -ti`.
    @Test func relay_whenClientsNeverRead_eachPinsASmallPipeAndALimitedReceiveBuffer() throws {
        let backend = try Self.endlessSender(testBytes(1 << 20, seed: 3))
        let relay = try Relay(remote: backend.address)
        let clients = try (0..<4).map { _ in try TestSocket.connect(to: relay.address) }
        // Settled: the relay's sockets towards the server have taken the same bytes, and its pipes hold the same,
        // twice in a row, 0.5 s apart.
        var previous: [RelayPipe] = []
        var previousReceived: [Int] = []
        let settled = eventually(timeout: 20) {
            let pipes = relayPipes(of: relay.process.pid)
            let received =
                (try? socketField("bytes_received:", details: "i", filter: "dst \(backend.address)").values) ?? []
            defer { (previous, previousReceived) = (pipes, received) }
            usleep(500_000)
            return received.count == clients.count && received.allSatisfy { $0 > 0 } && received == previousReceived
                && pipes == previous
        }
        #expect(settled, "the stalled connections' pipes: \(previous), taken from the server: \(previousReceived)")
        #expect(previous.filter { $0.bytes > 0 }.count <= clients.count, "\(previous)")
        let largestPipe = previous.map(\.capacity).max() ?? 0
        // The relay's standard output and error are pipes of 64 KiB too.
        #expect(largestPipe > 0 && largestPipe <= 64 << 10, "pipes of a client that never read: \(previous)")

        let (receiveBuffers, ss) = try socketField("rb", details: "m", filter: "dst \(backend.address)")
        #expect(receiveBuffers.count == clients.count, "\(ss)")
        // 4 times a pipe of 64 KiB at most, which the kernel doubles (the receive buffer now follows the pipe 1 to 1,
        // at least 64 KiB: 128 KiB here).
        #expect(
            receiveBuffers.allSatisfy { $0 <= 512 << 10 },
            "the relay's sockets towards the server: \(ss)")
        // The relay's sockets towards the clients hold what is in flight (the clients' windows) and little unsent.
        // A socket with nothing unsent has no notsent field.
        let (unsent, towardsClients) = try socketField(
            "notsent:", details: "i", filter: "src \(relay.address)", absent: 0)
        #expect(unsent.count == clients.count, "\(towardsClients)")
        #expect(unsent.allSatisfy { $0 <= 512 << 10 }, "the relay's sockets towards the clients: \(unsent)")
        #expect(relay.process.exitStatus() == nil)
    }

    /// `--splice no`: a bulk download from a server on this machine is copied through the relay and never takes a
    /// pipe (the default relay, beside it, has one after the same download), every byte arrives as sent, and when
    /// the client stops reading the relay holds it to the bounds of a splicing direction: little unsent in its socket
    /// towards the client, a limited receive buffer towards the server.
    @Test func relay_withSpliceNo_copiesBulkDataWithoutAPipe_withinTheSameBounds() throws {
        let block = testBytes(1 << 20, seed: 9)
        let backend = try Self.endlessSender(block)
        func download(_ arguments: [String]) throws -> (relay: Relay, pipesBefore: Int, client: TestSocket) {
            let relay = try Relay(remote: backend.address, arguments)
            let pipesBefore = relayPipes(of: relay.process.pid).count
            let client = try TestSocket.connect(to: relay.address)
            client.setTimeout(20)
            var received: [UInt8] = []
            while received.count < 8 << 20 {
                let chunk = try client.receive(upTo: 1 << 20)
                try #require(!chunk.isEmpty, "the download ended after \(received.count) bytes")
                received += chunk
            }
            for index in 0..<8 {
                #expect(Array(received[(index << 20)..<((index + 1) << 20)]) == block, "MiB \(index), \(arguments)")
            }
            return (relay, pipesBefore, client)
        }
        let spliced = try download([])
        #expect(relayPipes(of: spliced.relay.process.pid).count > spliced.pipesBefore, "the default relay splices")
        spliced.client.close()
        #expect(spliced.relay.stop() == 0)

        let copied = try download(["--splice", "no"])
        // The client has stopped reading: settled once the relay's socket towards the server has taken the same
        // bytes twice in a row, 0.5 s apart.
        var previous: [Int] = []
        let settled = eventually(timeout: 20) {
            let received =
                (try? socketField("bytes_received:", details: "i", filter: "dst \(backend.address)").values) ?? []
            defer { previous = received }
            usleep(500_000)
            return received.count == 1 && received == previous
        }
        #expect(settled, "taken from the server: \(previous)")
        #expect(relayPipes(of: copied.relay.process.pid).count == copied.pipesBefore, "a pipe with --splice no")
        let (receiveBuffers, ss) = try socketField("rb", details: "m", filter: "dst \(backend.address)")
        #expect(receiveBuffers.count == 1 && receiveBuffers.allSatisfy { $0 <= 512 << 10 }, "\(ss)")
        let (unsent, towardsClient) = try socketField(
            "notsent:", details: "i", filter: "src \(copied.relay.address)", absent: 0)
        #expect(unsent.count == 1 && unsent.allSatisfy { $0 <= 512 << 10 }, "\(towardsClient)")
        copied.client.close()
        #expect(copied.relay.stop() == 0)
    }

    /// An honest client that reads as fast as the server sends earns the largest pipe (`--bs 64k` here), and the
    /// relay's socket towards the server on this machine gets a receive buffer of the pipe's size, no more (at least
    /// 64 KiB, which the kernel doubles): the pipe is the relay's buffer. A larger one only queues in the relay what
    /// the server's own send buffer would hold, and once stalled clients take the machine past tcp_mem's pressure
    /// threshold, a socket holding more than its share of TCP memory has arriving segments dropped (issue 15: with 4
    /// times a 1 MiB pipe, 8 MiB, an honest download beside 500 stalled clients lost hundreds of segments where
    /// HAProxy's autotuned 0.5 MiB lost none). Read with `ss -tm` (rb) while the download runs.
    @Test func relay_toAServerOnThisMachine_givesAFastFlowAReceiveBufferOfItsPipeNoMore() throws {
        let backend = try Self.endlessSender(testBytes(1 << 20, seed: 5))
        let relay = try Relay(remote: backend.address, ["--bs", "64k"])
        let client = try TestSocket.connect(to: relay.address)
        client.setTimeout(20)
        // 16 KiB to 64 KiB takes 64 times 16 KiB, then 64 times 32 KiB, through a full pipe: 3 MiB. 32 MiB is ample.
        var received = 0
        while received < 32 << 20 {
            let chunk = try client.receive(upTo: 1 << 20)
            try #require(!chunk.isEmpty, "the download ended after \(received) bytes")
            received += chunk.count
        }
        // The client stops reading here, so the flow's pipe fills (the relay's standard output and error are pipes
        // of 64 KiB too, empty).
        var pipes: [RelayPipe] = []
        let filled = eventually(timeout: 10) {
            pipes = relayPipes(of: relay.process.pid).filter { $0.bytes > 0 }
            return !pipes.isEmpty
        }
        let largestPipe = pipes.map(\.capacity).max() ?? 0
        #expect(filled && largestPipe == 64 << 10, "the honest flow's pipe: \(pipes)")
        let (receiveBuffers, ss) = try socketField("rb", details: "m", filter: "dst \(backend.address)")
        #expect(receiveBuffers.count == 1, "\(ss)")
        // SO_RCVBUF of max(64 KiB, the pipe), which the kernel doubles: 128 KiB (4 times the pipe gave 512 KiB, or
        // net.core.rmem_max's cap, doubled).
        #expect(
            receiveBuffers.allSatisfy { $0 <= 2 * max(64 << 10, largestPipe) },
            "the relay's socket towards the server: \(ss)")
        #expect(relay.process.exitStatus() == nil)
    }

    /// The segment size the relay announces to a server on this machine when connecting (TCP_MAXSEG,
    /// `--loopback-mss`), read from the server's side with `ss -ti` (mss): by default the loopback interface's (some
    /// 64 KiB) while the machine's TCP memory has room for the server's send buffer, and 4096 when it has not, which
    /// the test makes it by showing the relay another tcp_mem (a file mounted over /proc/sys/net/ipv4/tcp_mem in a
    /// mount namespace of its own): a pressure threshold of one page, which leaves room for none, or of four billion
    /// pages. A number is that size always, `system` the interface's always. The burst of clients that the default
    /// limits is `relay_withManyClientsAtOnce_givesFewOfTheirServersWideSegments`.
    @Test func loopbackMSS_isTheSegmentSizeOfTheServersSocket() throws {
        func serverSegmentSize(_ arguments: [String], tcpMem: String? = nil) throws -> (mss: Int, relay: Relay) {
            let backend = try TestServer { connection in
                connection.setTimeout(10)
                _ = try? connection.receive(upTo: 1)
            }
            let directory = TemporaryDirectory()
            let wrapper = try tcpMem.map { try Self.showingTCPMem($0, in: directory) } ?? []
            let relay = try Relay(remote: backend.address, arguments, wrapper: wrapper)
            let client = try TestSocket.connect(to: relay.address)
            var output = ""
            var segment = 0
            _ = eventually(timeout: 10) {
                guard let ss = try? socketField(" mss:", details: "i", filter: "src \(backend.address)")
                else { return false }
                output = ss.output
                segment = ss.values.first ?? 0
                return segment > 0
            }
            withExtendedLifetime(client) {}
            #expect(segment > 0, "the server's socket: \(output)")
            return (segment, relay)
        }
        try #require(getuid() == 0, "needs root for a mount namespace")
        let high = try serverSegmentSize([], tcpMem: "1 1 2\n")
        #expect(high.mss <= 4096)
        #expect(
            high.relay.process.waitForError(
                containing: "get small segments (--loopback-mss): 0 have the interface's, as many as TCP memory"),
            "\(high.relay.process.standardError)")
        let low = try serverSegmentSize([], tcpMem: "3000000000 4000000000 5000000000\n")
        #expect(low.mss > 16384)
        #expect(low.relay.stop() == 0)
        #expect(!low.relay.process.standardError.contains("small segments"), "\(low.relay.process.standardError)")
        #expect(
            try serverSegmentSize(["--loopback-mss", "4096"], tcpMem: "3000000000 4000000000 5000000000\n").mss <= 4096)
        #expect(try serverSegmentSize(["--loopback-mss", "1200"]).mss <= 1200)
        #expect(try serverSegmentSize(["--loopback-mss", "system"], tcpMem: "1 1 2\n").mss > 16384)
    }

    /// A server that sends `block` over and over on every connection, until its peer goes away (or 20 s pass
    /// without progress).
    static func endlessSender(_ block: [UInt8]) throws -> TestServer {
        try TestServer { connection in
            connection.setTimeout(20)
            while (try? connection.send(block)) != nil {}
        }
    }

    /// A command that runs the relay (its command line after it) in a mount namespace where
    /// /proc/sys/net/ipv4/tcp_mem says `tcpMem`, from a file in `directory`.
    static func showingTCPMem(_ tcpMem: String, in directory: TemporaryDirectory) throws -> [String] {
        try #require(getuid() == 0, "needs root for a mount namespace")
        let file = "\(directory.path)/tcp_mem"
        try #require(FileManager.default.createFile(atPath: file, contents: Data(tcpMem.utf8)))
        return inMountNamespace(binding: [(file, "/proc/sys/net/ipv4/tcp_mem")])
    }

    /// Clients that connect at once, before any server's buffer has filled, are counted as they connect: no more of
    /// their servers get the interface's segments than the TCP memory has room for at 4 MiB each (here, with a
    /// pressure threshold made 4 times what TCP holds plus 5 such buffers, about 5 of 20), the others 4096, and the
    /// relay says how many got them when the first is refused.
    @Test func relay_withManyClientsAtOnce_givesFewOfTheirServersWideSegments() throws {
        let backend = try TestServer { connection in
            connection.setTimeout(15)
            _ = try? connection.receive(upTo: 1)
        }
        let sockstat = try #require(readWholeFile("/proc/self/net/sockstat"))
        let line = try #require(sockstat.split(separator: "\n").first { $0.hasPrefix("TCP: ") })
        let held = try #require(Int(line.components(separatedBy: " mem ")[1].prefix { $0.isNumber }))
        let pressure = 4 * (held + 5 * (4 << 20) / Int(getpagesize()))
        let directory = TemporaryDirectory()
        let relay = try Relay(
            remote: backend.address, wrapper: Self.showingTCPMem("1 \(pressure) \(2 * pressure)\n", in: directory))
        let clients = try (0..<20).map { _ in try TestSocket.connect(to: relay.address) }
        let logged = "get small segments (--loopback-mss): "
        #expect(relay.process.waitForError(containing: logged), "\(relay.process.standardError)")
        let text = relay.process.standardError
        let wide = Int(text.components(separatedBy: logged).last?.prefix { $0.isNumber } ?? "") ?? -1
        var segments: [Int] = []
        var output = ""
        _ = eventually(timeout: 10) {
            guard let ss = try? socketField(" mss:", details: "i", filter: "src \(backend.address)")
            else { return false }
            (segments, output) = (ss.values, ss.output)
            return segments.count == clients.count
        }
        #expect(segments.count == clients.count, "\(output)")
        // Other tests' connections move TCP memory meanwhile: the relay's own count is the one to check against.
        #expect((0...8).contains(wide), "\(text)")
        // The line gives the threshold the relay read, in MiB.
        let threshold = (pressure * Int(getpagesize())) >> 20
        #expect(text.contains(", pressure threshold \(threshold) MiB)"), "\(text)")
        #expect(segments.filter { $0 > 16384 }.count == wide, "\(output)")
        #expect(segments.filter { $0 <= 4096 }.count == clients.count - wide, "\(output)")
        withExtendedLifetime(clients) {}
    }

    /// The relay's sockets whose peer is on this machine use reno, which does not pace; the others keep the
    /// system's congestion control. In a network namespace of its own, whose default is made an algorithm other than
    /// reno, whose loopback interface also carries 192.0.2.1 (an address of this machine that is not a loopback one)
    /// and which reaches another machine (a second namespace, 10.9.0.2) over a veth pair, relays take connections
    /// from [::1] on a [::1] listener (its accepted sockets inherit the listener's algorithm) and on a [::] listener
    /// (set per accepted client), from 192.0.2.1 on 192.0.2.1, from the other machine, and inetd style; they relay to
    /// 127.0.0.1, to 192.0.2.1 and to the other machine. Two more relay [::1] to 127.0.0.1 with
    /// `--loopback-congestion-control system` (the default stays) and with a third algorithm named (it replaces reno).
    /// `ss` reports every socket's algorithm.
    @Test func congestionControl_isRenoTowardsPeersOnThisMachine_andTheSystemDefaultOtherwise() throws {
        try #require(getuid() == 0, "needs root for network namespaces")
        let directory = TemporaryDirectory()
        let echo = testBuildDirectory.appendingPathComponent("tcx-test-echo").path
        let process = try ChildProcess(
            "/usr/bin/unshare",
            ["-n", "/bin/bash", "-c", Self.congestionScript, "bash", directory.path, relayBinary, echo])
        #expect(process.waitForExit(timeout: 30) == 0, "\(process.standardError)")
        let lines = process.standardOutput.split(separator: "\n").map(String.init)
        let fields = { (prefix: String) in
            lines.first { $0.hasPrefix(prefix + " ") }?.split(separator: " ").dropFirst().map(String.init) ?? []
        }
        let system = try #require(fields("default").first)
        try #require(system != "reno", "the kernel offers no algorithm but reno: nothing to tell apart")
        let chosen = try #require(fields("chosen").first)
        let ports = fields("ports")
        try #require(ports.count == 11, "\(process.standardOutput)")
        let (loopback, own, any, veth, toOwn, toFar, inetd, backend, far) =
            (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6], ports[7], ports[8])
        let (leftAlone, named) = (ports[9], ports[10])
        // `ss -Htin` prints each socket as "Recv-Q Send-Q LOCAL PEER", then a line of details, among them the
        // algorithm's name (after "ts sack" in some versions).
        let algorithms = Set(fields("available"))
        var algorithm: [String: String] = [:]
        var sockets: [(local: String, peer: String)] = []
        for (line, info) in zip(lines, lines.dropFirst()) {
            let columns = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard columns.count == 4, columns[0].allSatisfy(\.isNumber),
                let name = info.split(whereSeparator: { $0 == " " || $0 == "\t" }).first(where: {
                    algorithms.contains(String($0))
                })
            else { continue }
            sockets.append((columns[2], columns[3]))
            algorithm[columns[2] + " " + columns[3]] = String(name)
        }
        func of(local: String? = nil, localHost: String? = nil, peer: String? = nil) -> [String] {
            sockets.filter { socket in
                (local.map { socket.local == $0 } ?? true) && (peer.map { socket.peer == $0 } ?? true)
                    && (localHost.map { socket.local.hasPrefix($0 + ":") } ?? true)
            }.map { algorithm[$0.local + " " + $0.peer]! }
        }
        let output = process.standardOutput
        // Clients on this machine: over loopback, and from the machine's own address.
        for port in [loopback, any, inetd] {
            #expect(of(local: "[::1]:\(port)") == ["reno"], "[::1]:\(port) in \(output)")
        }
        for port in [toOwn, toFar] {
            #expect(of(local: "[::1]:\(port)") == ["reno", "reno"], "[::1]:\(port) in \(output)")
        }
        #expect(of(local: "192.0.2.1:\(own)") == ["reno", "reno"], "\(output)")
        // Remotes on this machine: 127.0.0.1 (six connections lead there from 127.0.0.1, two more from the
        // relays below), and the machine's own address, the first time found out after the connect, the second
        // time known before it.
        #expect(of(localHost: "127.0.0.1", peer: "127.0.0.1:\(backend)") == Array(repeating: "reno", count: 6))
        #expect(of(peer: "192.0.2.1:\(own)") == ["reno", "reno"], "\(output)")
        // The other machine, as a client and as a remote (twice, the same way).
        #expect(of(local: "10.9.0.1:\(veth)") == [system], "\(output)")
        #expect(of(peer: "10.9.0.2:\(far)") == [system, system], "\(output)")
        // --loopback-congestion-control system leaves both sockets the default; a named algorithm goes on both.
        #expect(of(local: "[::1]:\(leftAlone)") == [system], "\(output)")
        #expect(of(localHost: "127.0.0.2", peer: "127.0.0.1:\(backend)") == [system], "\(output)")
        #expect(of(local: "[::1]:\(named)") == [chosen], "\(output)")
        #expect(of(localHost: "127.0.0.3", peer: "127.0.0.1:\(backend)") == [chosen], "\(output)")
        // The sockets of the clients and of the backend have the namespace's default.
        #expect(of(local: "127.0.0.1:\(backend)") == Array(repeating: system, count: 8))
        #expect(of(peer: "[::1]:\(loopback)") == [system])
    }

    /// Run by `congestionControl_…` in a new network namespace: DIRECTORY RELAY ECHO-HELPER. Prints the namespace's
    /// default algorithm, the available ones, the one given to `--loopback-congestion-control` (a third if the
    /// kernel has one, else reno) and the ports (the relays', the backend's on 127.0.0.1 and the other machine's),
    /// then `ss -Htin` with a connection through each (two through the relays towards 192.0.2.1 and 10.9.0.2). The
    /// namespace is new and empty, so the port given to systemd-socket-activate, which takes no port 0, is free.
    static let congestionScript = """
        set -eu
        # Whatever happens, everything started here stops with the script.
        trap 'kill $(jobs -p) 2> /dev/null || true' EXIT
        cd "$1"
        ip link set lo up
        ip addr add 192.0.2.1/32 dev lo
        other=$(tr ' ' '\\n' < /proc/sys/net/ipv4/tcp_available_congestion_control | grep -vx reno | head -n 1 || true)
        # A read-only /proc/sys leaves the namespace with the default it inherited, reno only if the machine's is.
        if [ -n "$other" ]; then echo "$other" 2> /dev/null > /proc/sys/net/ipv4/tcp_congestion_control || true; fi
        default=$(cat /proc/sys/net/ipv4/tcp_congestion_control)
        echo "default $default"
        echo "available $(cat /proc/sys/net/ipv4/tcp_available_congestion_control)"
        chosen=$(tr ' ' '\\n' < /proc/sys/net/ipv4/tcp_available_congestion_control | grep -vx -e reno -e "$default" \\
            | head -n 1 || true)
        chosen=${chosen:-reno}
        echo "chosen $chosen"
        # Another machine: a second network namespace, 10.9.0.2, behind a veth pair.
        unshare -n sleep 60 &
        machine=$!
        sleep 0.1
        ip link add v0 type veth peer name v1
        ip link set v1 netns "$machine"
        ip addr add 10.9.0.1/24 dev v0
        ip link set v0 up
        nsenter -t "$machine" -n sh -c 'ip addr add 10.9.0.2/24 dev v1 && ip link set v1 up && ip link set lo up'
        # $1: file, $2: text: waits until the file holds the text.
        await() { for _ in $(seq 1000); do grep -q "$2" "$1" 2> /dev/null && return; sleep 0.01; done; }
        # $1: file, $2: address: the port after ADDRESS: in the file's "listening on" line.
        port() { grep 'listening on' "$1" | tr ' ,' '\\n\\n' | grep -F "$2:" | head -n 1 | sed 's/.*://'; }
        "$3" > echo.out &
        await echo.out 'listening on'
        nsenter -t "$machine" -n "$3" 10.9.0.2 > far.out &
        await far.out 'listening on'
        echo_port=$(port echo.out 127.0.0.1)
        far_port=$(port far.out 10.9.0.2)
        "$2" --local '[::1]:0' --local 192.0.2.1:0 --local '[::]:0' --local 10.9.0.1:0 --remote "127.0.0.1:$echo_port" \\
            --foreground 2> main.err &
        await main.err 'listening on'
        loopback=$(port main.err '[::1]')
        own=$(port main.err 192.0.2.1)
        any=$(port main.err '[::]')
        veth=$(port main.err 10.9.0.1)
        # One thread each: their second connection goes through the loop the first taught.
        "$2" --local '[::1]:0' --remote "192.0.2.1:$own" --threads 1 --foreground 2> toown.err &
        await toown.err 'listening on'
        toown=$(port toown.err '[::1]')
        "$2" --local '[::1]:0' --remote "10.9.0.2:$far_port" --threads 1 --foreground 2> tofar.err &
        await tofar.err 'listening on'
        tofar=$(port tofar.err '[::1]')
        # The same loopback path with the option: the outgoing sockets leave from 127.0.0.2 and .3 to be told apart.
        "$2" --local '[::1]:0' --remote "127.0.0.1:$echo_port" --source 127.0.0.2 \\
            --loopback-congestion-control system --foreground 2> system.err &
        await system.err 'listening on'
        left_alone=$(port system.err '[::1]')
        "$2" --local '[::1]:0' --remote "127.0.0.1:$echo_port" --source 127.0.0.3 \\
            --loopback-congestion-control "$chosen" --foreground 2> chosen.err &
        await chosen.err 'listening on'
        named=$(port chosen.err '[::1]')
        inetd=7000
        systemd-socket-activate -l "[::1]:$inetd" --accept --inetd "$2" --remote "127.0.0.1:$echo_port" 2> inetd.err &
        await inetd.err 'Listening on'
        echo "ports $loopback $own $any $veth $toown $tofar $inetd $echo_port $far_port $left_alone $named"
        nsenter -t "$machine" -n bash -c "exec 3<> /dev/tcp/10.9.0.1/$veth; echo hello >&3; read -r reply <&3; echo ok > far.ready; sleep 30" &
        await far.ready ok
        exec 3<> "/dev/tcp/::1/$loopback" 4<> "/dev/tcp/::1/$any" 5<> "/dev/tcp/::1/$toown" 6<> "/dev/tcp/::1/$tofar" \\
            7<> "/dev/tcp/::1/$inetd" 8<> "/dev/tcp/::1/$left_alone" 9<> "/dev/tcp/::1/$named"
        exec 10<> "/dev/tcp/::1/$toown" 11<> "/dev/tcp/::1/$tofar"
        for fd in 3 4 5 6 7 8 9 10 11; do
            echo hello >&"$fd"
            read -r reply <&"$fd"
        done
        ss -Htin state established
        """
}

/// Bytes received on one thread, with where their urgent mark was, read on another.
final class ByteLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _bytes: [UInt8] = []
    private var _mark: Int?

    func record(_ bytes: [UInt8], mark: Int?) {
        lock.withLock {
            _bytes = bytes
            _mark = mark
        }
    }
    var bytes: [UInt8] { lock.withLock { _bytes } }
    var mark: Int? { lock.withLock { _mark } }
}

/// A total added to from several threads.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var total = 0

    func add(_ count: Int) { lock.withLock { total += count } }
    var value: Int { lock.withLock { total } }
}

/// Counts outcomes reported from several threads.
final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var _successes = 0
    private var _failures = 0
    private var _firstFailure: String?

    func record(_ success: Bool) {
        lock.withLock {
            if success { _successes += 1 } else { _failures += 1 }
        }
    }

    /// A failure, and what it was: the first one's description is kept for the test's message.
    func record(failure: String) {
        lock.withLock {
            _failures += 1
            if _firstFailure == nil { _firstFailure = failure }
        }
    }

    var successes: Int { lock.withLock { _successes } }
    var failures: Int { lock.withLock { _failures } }
    var firstFailure: String { lock.withLock { _firstFailure ?? "none" } }
}

/// A pipe of a process, as /proc/PID/fd shows it.
struct RelayPipe: Equatable, CustomStringConvertible {
    /// F_GETPIPE_SZ.
    let capacity: Int
    /// FIONREAD: the bytes in it.
    let bytes: Int

    var description: String { "\(bytes) of \(capacity) bytes" }
}

/// What `ss` lists of the established TCP sockets that `filter` selects (`dst ADDRESS:PORT`, with the address: a
/// port alone may also be that of another test's listener on another loopback address), a line each, with the
/// `details` asked for (`m` skmem, `i` TCP_INFO): per line the number after `field` (`rb`, `notsent:`, ` mss:`), or
/// `absent` for a line without it (nil leaves the line out), and ss's whole output for messages.
func socketField(
    _ field: String, details: String, filter: String, absent: Int? = nil
) throws -> (values: [Int], output: String) {
    let ss = try ChildProcess("/usr/bin/ss", ["-t\(details)nHO", "state", "established", filter])
    #expect(ss.waitForExit(timeout: 10) == 0)
    let values = ss.standardOutput.split(separator: "\n").compactMap { line -> Int? in
        guard let range = line.range(of: field) else { return absent }
        return Int(line[range.upperBound...].prefix { $0.isNumber })
    }
    return (values, ss.standardOutput)
}

/// The pipes a process holds, each once (a pipe has two descriptors), opened again through /proc/PID/fd.
func relayPipes(of pid: pid_t) -> [RelayPipe] {
    let directory = "/proc/\(pid)/fd"
    var seen = Set<String>()
    var pipes: [RelayPipe] = []
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(entry)"),
            target.hasPrefix("pipe:"), seen.insert(target).inserted
        else { continue }
        let fd = open("\(directory)/\(entry)", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { continue }
        defer { close(fd) }
        let getPipeSize: Int32 = 1032  // F_GETPIPE_SZ, which Glibc's module does not export
        var queued: Int32 = 0
        guard ioctl(fd, UInt(FIONREAD), &queued) == 0 else { continue }
        pipes.append(RelayPipe(capacity: Int(fcntl(fd, getPipeSize)), bytes: Int(queued)))
    }
    return pipes.sorted { ($0.capacity, $0.bytes) < ($1.capacity, $1.bytes) }
}
