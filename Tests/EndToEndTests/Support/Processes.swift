import Foundation
import Glibc

/// The build directory of the test bundle, where the test helpers (`tcx-test-echo`) are built.
let testBuildDirectory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()

/// The built tcp-crossover binary: `$TCP_CROSSOVER_BINARY` when set (a sanitizer or release build), otherwise the
/// one next to the test bundle in the build directory.
let relayBinary: String = {
    if let path = ProcessInfo.processInfo.environment["TCP_CROSSOVER_BINARY"], !path.isEmpty { return path }
    return testBuildDirectory.appendingPathComponent("tcp-crossover").path
}()

/// A process the test started: its output and error are collected on threads of their own, so that it never
/// blocks on a full pipe; it is killed when the object goes away, so that no test leaves one behind.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    private let lock = NSLock()
    private var _status: Int32?
    private var reaped = false
    /// What the reading threads collect. They hold this, not the process object, so that dropping the object
    /// kills the process even while it still writes.
    private let capture = Capture()

    private final class Capture: @unchecked Sendable {
        let lock = NSLock()
        var output: [UInt8] = []
        var error: [UInt8] = []
        var openStreams = 2
    }

    /// Starts `executable` with `arguments`; `environment` is added to (or, for a nil value, removed from) this
    /// process's. `standardInput` is a descriptor to give as standard input (default: /dev/null);
    /// `standardError` one to give as standard error, which the test then reads itself (or not: a log reader that
    /// stopped), instead of a pipe collected here.
    init(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String?] = [:],
        standardInput: Int32? = nil,
        standardError: Int32? = nil,
        extraDescriptors: [Int32] = []
    ) throws {
        Self.closeTestDescriptorsOnExec()
        var outputPipe: [Int32] = [0, 0]
        var errorPipe: [Int32] = [0, 0]
        guard pipe(&outputPipe) == 0, pipe(&errorPipe) == 0 else { throw TestFailure("pipe") }
        for fd in outputPipe + errorPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let standardInput {
            posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, outputPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, standardError ?? errorPipe[1], 2)
        // Descriptors passed on as they are (socket activation): dup2 onto themselves clears close-on-exec.
        for fd in extraDescriptors { posix_spawn_file_actions_adddup2(&actions, fd, fd) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with no blocked signals and default dispositions, whatever the test runner set.
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGUSR1] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var environmentValues = ProcessInfo.processInfo.environment
        for (name, value) in environment { environmentValues[name] = value ?? nil }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environmentValues.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        Glibc.close(outputPipe[1])
        Glibc.close(errorPipe[1])
        guard status == 0 else {
            Glibc.close(outputPipe[0])
            Glibc.close(errorPipe[0])
            throw TestFailure("posix_spawn \(executable)", errno: status)
        }
        self.pid = pid
        let capture = self.capture
        Self.collect(outputPipe[0], capture) { bytes in capture.output += bytes }
        if standardError == nil {
            Self.collect(errorPipe[0], capture) { bytes in capture.error += bytes }
        } else {
            Glibc.close(errorPipe[0])
            capture.lock.withLock { capture.openStreams -= 1 }
        }
    }

    /// Marks every descriptor of the test process close-on-exec, so that a child inherits only what it is given
    /// (the test runner leaves some open without the flag).
    private static func closeTestDescriptorsOnExec() {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        for entry in entries {
            guard let fd = Int32(entry), fd > 2 else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    deinit {
        kill(signal: SIGKILL)
        _ = waitForExit(timeout: 5)
    }

    /// Reads `fd` to its end on a thread of its own, handing each block to `append` under the capture's lock.
    private static func collect(_ fd: Int32, _ capture: Capture, _ append: @escaping @Sendable ([UInt8]) -> Void) {
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                let block = Array(buffer[0..<count])
                capture.lock.withLock { append(block) }
            }
            Glibc.close(fd)
            capture.lock.withLock { capture.openStreams -= 1 }
        }
    }

    var standardOutput: String { capture.lock.withLock { String(decoding: capture.output, as: UTF8.self) } }
    var standardError: String { capture.lock.withLock { String(decoding: capture.error, as: UTF8.self) } }

    func kill(signal: Int32) {
        let done = lock.withLock { reaped }
        if !done { Glibc.kill(pid, signal) }
    }

    /// The exit status (or 128 + signal), once the process has ended; nil while it runs.
    func exitStatus() -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if let status = _status { return status }
        var raw: Int32 = 0
        let result = waitpid(pid, &raw, WNOHANG)
        guard result == pid else { return nil }
        reaped = true
        let status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        _status = status
        return status
    }

    /// Waits for the process to end and its output and error to be read to the end (unless a child it left
    /// behind holds them); its status, or nil if it still runs after `timeout` seconds.
    func waitForExit(timeout: Double = 10) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status = exitStatus() {
                let drained = Date().addingTimeInterval(1)
                while capture.lock.withLock({ capture.openStreams > 0 }) && Date() < drained { usleep(1_000) }
                return status
            }
            usleep(2_000)
        }
        return exitStatus()
    }

    /// Waits until standard error contains `text`; false after `timeout` seconds or if the process ended first.
    func waitForError(containing text: String, timeout: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if standardError.contains(text) { return true }
            if exitStatus() != nil { return standardError.contains(text) }
            usleep(5_000)
        }
        return false
    }

    /// Descriptors open in the process now (from /proc).
    var openDescriptors: Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Descriptors of the process whose flags (in /proc/PID/fdinfo) lack O_CLOEXEC.
    var descriptorsWithoutCloseOnExec: [Int] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fdinfo")) ?? []
        return entries.compactMap { entry -> Int? in
            guard let fd = Int(entry),
                let info = readWholeFile("/proc/\(pid)/fdinfo/\(entry)"),
                let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags:") }),
                let flags = Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces), radix: 8)
            else { return nil }
            return flags & Int(O_CLOEXEC) == 0 ? fd : nil
        }.sorted()
    }

    /// A field of /proc/PID/status, such as `Uid` or `VmRSS`.
    func status(_ field: String) -> String? {
        guard let text = readWholeFile("/proc/\(pid)/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }
}

/// A relay started in the foreground on port 0, with the port it reports.
final class Relay: @unchecked Sendable {
    let process: ChildProcess
    /// The addresses it listens on, from its start line.
    let listening: [String]

    /// Starts `tcp-crossover -f --local LOCAL --remote REMOTE ARGUMENTS` and waits for its start line; with a
    /// `wrapper`, that command with the relay's command line after its own arguments (`unshare`, `sh -c`).
    init(
        local: [String], remote: String, _ arguments: [String] = [], environment: [String: String?] = [:],
        wrapper: [String] = []
    ) throws {
        let options = local.flatMap { ["--local", $0] } + ["--remote", remote, "--foreground"] + arguments
        let command = wrapper + [relayBinary] + options
        process = try ChildProcess(command[0], Array(command.dropFirst()), environment: environment)
        guard process.waitForError(containing: "listening on ") else {
            throw TestFailure(message: "the relay did not start: \(process.standardError)")
        }
        let line = process.standardError.split(separator: "\n").first { $0.contains("listening on ") }!
        let list = line.components(separatedBy: "listening on ")[1].components(separatedBy: ", relaying")[0]
        listening = list.components(separatedBy: ", ")
    }

    /// A relay on the loopback address of `family` ([::1] or 127.0.0.1), port 0.
    convenience init(
        family: Int32 = AF_INET6, remote: TestAddress, _ arguments: [String] = [], wrapper: [String] = []
    ) throws {
        try self.init(
            local: [family == AF_INET ? "127.0.0.1:0" : "[::1]:0"], remote: remote.description, arguments,
            wrapper: wrapper)
    }

    /// The first listening address, as a socket address to connect to.
    var address: TestAddress {
        let text = listening[0]
        let port = UInt16(text.split(separator: ":").last!)!
        if text.hasPrefix("[") {
            let host = String(text.dropFirst().prefix { $0 != "]" })
            return .ipv6(host == "::" ? "::1" : host, port)
        }
        let host = String(text.prefix { $0 != ":" })
        return .ipv4(host == "0.0.0.0" ? "127.0.0.1" : host, port)
    }

    /// Stops the relay with SIGTERM; its exit status.
    @discardableResult
    func stop() -> Int32? {
        process.kill(signal: SIGTERM)
        return process.waitForExit()
    }

    /// The per-connection log lines so far.
    var connectionLines: [String] {
        process.standardError.split(separator: "\n").map(String.init).filter { $0.contains(" bytes up, ") }
    }
}

/// The whole content of a file, read to its end (files in /proc report no size, and may be longer than a page).
func readWholeFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var content: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        content += buffer[0..<count]
    }
    return String(decoding: content, as: UTF8.self)
}

/// A command line prefix that runs the command after it in a mount namespace of its own (root only), with each
/// `source` bind-mounted over its `target` in order: a file the relay reads (/etc/hosts, tcp_mem) or a directory
/// (/dev) that the test shows it instead of the machine's.
func inMountNamespace(binding mounts: [(source: String, target: String)]) -> [String] {
    let script = String(repeating: "mount --bind \"$1\" \"$2\" && shift 2 && ", count: mounts.count) + "exec \"$@\""
    return ["/usr/bin/unshare", "-m", "/bin/sh", "-c", script, "sh"] + mounts.flatMap { [$0.source, $0.target] }
}
