import Glibc

/// The pidfile: holds the daemon's pid, locked with flock(2) for the life of the process, so that a second
/// instance fails at once and a stale file (left by a crash, unlocked) is taken over.
///
/// It is opened as root, in a directory that others may be able to write to, so with care: never through a symbolic
/// link (O_NOFOLLOW), and only if it is a regular file with no other name (a hard link), so that a link planted in
/// its place cannot make root create, truncate or write another file. An existing regular file with a single name is
/// taken over rather than refused (O_EXCL would refuse the stale file left by every crash): it is no other file.
public struct Pidfile: ~Copyable {
    public let path: String
    private var fd: CInt

    /// Opens and locks `path`, creating it if needed.
    public init(path: String) throws(StartupError) {
        let fd: CInt
        do {
            fd = try Syscall.open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NOCTTY, mode: 0o644)
        } catch  where error == Errno(ELOOP) {
            throw StartupError(
                ExitStatus.cannotCreate, "the pidfile \(path) is a symbolic link: refused, a pidfile is never followed")
        } catch {
            throw StartupError(ExitStatus.cannotCreate, "cannot open the pidfile \(path): \(error)")
        }
        do {
            let file = try Syscall.regularFile(fd)
            let problem =
                !file.regular ? "is not a regular file" : file.links > 1 ? "has other names (hard links)" : nil
            if let problem {
                Syscall.close(fd)
                throw StartupError(ExitStatus.cannotCreate, "the pidfile \(path) \(problem): refused")
            }
        } catch let error as StartupError {
            throw error
        } catch {
            Syscall.close(fd)
            throw StartupError(ExitStatus.cannotCreate, "cannot examine the pidfile \(path): \(error)")
        }
        do {
            if try !Syscall.tryLock(fd) {
                let content = (try? Syscall.readStart(fd, count: 32)) ?? []
                let pid = String(decoding: content, as: UTF8.self).split(whereSeparator: { $0 == "\n" }).first
                Syscall.close(fd)
                throw StartupError(
                    ExitStatus.alreadyRunning,
                    "already running (pid \(pid.map(String.init) ?? "unknown")): \(path) is locked")
            }
        } catch let error as StartupError {
            throw error
        } catch {
            Syscall.close(fd)
            throw StartupError(ExitStatus.cannotCreate, "cannot lock the pidfile \(path): \(error)")
        }
        self.path = path
        self.fd = fd
    }

    /// Writes `pid` (this process's, after any fork) into the file.
    public func record(_ pid: CInt) throws(StartupError) {
        do {
            try Syscall.truncate(fd, to: 0)
            try Syscall.writeStart(fd, Array("\(pid)\n".utf8))
        } catch {
            throw StartupError(ExitStatus.cannotCreate, "cannot write the pidfile \(path): \(error)")
        }
    }

    /// Removes the file, then releases the lock.
    public consuming func remove() {
        do {
            try Syscall.unlink(path)
        } catch {
            // Without the right to remove it (privileges dropped, directory not writable), an empty unlocked
            // file is left: the next start takes it over.
            _ = try? Syscall.truncate(fd, to: 0)
            Log.warning("cannot remove the pidfile \(path): \(error); it was emptied instead")
        }
    }

    /// Drops this process's hold on the file without removing it: another process (the parent that keeps it)
    /// removes it. The descriptor stays open, so the lock is held as long as this process lives.
    public consuming func forget() {
        fd = -1
    }

    deinit {
        if fd >= 0 { Syscall.close(fd) }
    }
}
