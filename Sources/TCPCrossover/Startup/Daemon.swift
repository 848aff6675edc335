import Glibc

/// Going into the background the way a user can rely on: the command returns only once the daemon is listening
/// (exit 0), or with the daemon's own error message and status when it could not start.
public enum Daemon {
    /// The child's end of the readiness pipe.
    public struct Readiness: ~Copyable {
        let fd: CInt

        /// Tells the waiting parent that the daemon is serving; it exits 0.
        public consuming func ready() {
            _ = try? Syscall.writeAll(fd, [0])
        }

        /// Tells the waiting parent why the daemon could not start; it prints the message and exits `status`.
        public consuming func failed(_ error: StartupError) {
            _ = try? Syscall.writeAll(fd, [UInt8(truncatingIfNeeded: error.status)] + Array(error.message.utf8))
        }

        deinit {
            Syscall.close(fd)
        }
    }

    /// Forks. The parent waits for the child's word and exits with it; it never returns. The child starts a new
    /// session, moves to `/`, points standard input, output and error at /dev/null, and gets the pipe on which to
    /// say it is ready.
    public static func detach() throws(StartupError) -> Readiness {
        let pipe: (read: CInt, write: CInt)
        let pid: CInt
        do {
            pipe = try Syscall.pipe(blocking: true)
        } catch {
            throw StartupError(ExitStatus.systemError, "pipe failed: \(error)")
        }
        do {
            pid = try Syscall.fork()
        } catch {
            throw StartupError(ExitStatus.systemError, "fork failed: \(error)")
        }
        if pid > 0 {
            Syscall.close(pipe.write)
            waitForChild(pipe.read)
        }
        Syscall.close(pipe.read)
        do {
            try Syscall.newSession()
            try Syscall.changeDirectory("/")
            let null = try Syscall.open("/dev/null", O_RDWR)
            for target in [STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO] { try Syscall.duplicate(null, onto: target) }
            if null > STDERR_FILENO { Syscall.close(null) }
        } catch {
            let readiness = Readiness(fd: pipe.write)
            readiness.failed(StartupError(ExitStatus.systemError, "detaching from the terminal failed: \(error)"))
            Syscall.exitImmediately(ExitStatus.systemError)
        }
        return Readiness(fd: pipe.write)
    }

    /// With `--user` and `--pidfile`, the relay cannot remove a pidfile in a directory only root may write to
    /// (such as /var/run). So the process forks before it drops its privileges: the child becomes the relay (its
    /// pid goes into the pidfile); the parent keeps root only to remove the pidfile once the relay has exited. It
    /// holds no socket, reads no input, passes on the signals other processes send it, and exits with the relay's
    /// status. Returns in the child, whose pid is in the pidfile; the parent closes `descriptors` (the listening
    /// sockets, the readiness pipe) and never returns.
    public static func keepPidfile(_ pidfile: consuming Pidfile, closing descriptors: [CInt]) throws(StartupError) {
        let pid: CInt
        do {
            pid = try Syscall.fork()
        } catch {
            throw StartupError(ExitStatus.systemError, "fork failed: \(error)")
        }
        if pid == 0 {
            // The child keeps the pidfile's descriptor open, and so shares the lock, until it exits.
            try pidfile.record(Syscall.processID)
            pidfile.forget()
            return
        }
        for fd in descriptors { Syscall.close(fd) }
        let status = Syscall.superviseChild(pid, forwarding: Engine.handledSignals)
        pidfile.remove()
        Syscall.exitImmediately(status)
    }

    /// The parent's side: blocks until the child reports, then exits.
    private static func waitForChild(_ fd: CInt) -> Never {
        var report: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            let result = buffer.withUnsafeMutableBytes { raw in Result { () throws(Errno) in try Syscall.read(fd, raw) }
            }
            guard case .success(.processed(let count)) = result, count > 0 else { break }
            report += buffer[0..<count]
        }
        guard let status = report.first else {
            _ = try? Syscall.writeAll(STDERR_FILENO, Array("tcp-crossover: the daemon exited while starting\n".utf8))
            Syscall.exitImmediately(ExitStatus.failure)
        }
        if status != 0 {
            let message = String(decoding: report.dropFirst(), as: UTF8.self)
            _ = try? Syscall.writeAll(STDERR_FILENO, Array("tcp-crossover: \(message)\n".utf8))
        }
        Syscall.exitImmediately(CInt(status))
    }
}
