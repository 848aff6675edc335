import Glibc

/// `--user` and `--group`: the identity the relay runs as once its listening sockets are bound (ports below 1024
/// need root to bind, nothing after).
public struct Identity: Equatable, Sendable {
    public let uid: uid_t?
    public let gid: gid_t
    /// The user's name, for initgroups(3); nil with `--group` alone.
    public let userName: String?

    /// Looks the names up (a name or a number each); with only a user, the group is the user's primary group. A group
    /// alone is refused when running as root: the relay would stay root, which can take any group back, so nothing
    /// would be dropped.
    public static func lookUp(user: String?, group: String?) throws(StartupError) -> Identity? {
        guard user != nil || group != nil else { return nil }
        var uid: uid_t?
        var gid: gid_t?
        var userName: String?
        if let user {
            guard let entry = Syscall.user(user) else {
                throw StartupError(ExitStatus.noUser, "--user: there is no user '\(user)'")
            }
            (uid, gid, userName) = (entry.uid, entry.gid, entry.name)
        }
        if let group {
            guard let entry = Syscall.group(group) else {
                throw StartupError(ExitStatus.noUser, "--group: there is no group '\(group)'")
            }
            gid = entry
        }
        if uid == nil && Syscall.identities.euid == 0 {
            throw StartupError(
                ExitStatus.usage,
                "--group without --user: the relay would still run as root, which can take any group back; "
                    + "give --user as well")
        }
        return Identity(uid: uid, gid: gid!, userName: userName)
    }

    /// Drops to this identity for good: supplementary groups (initgroups, or just the group without a user), then
    /// the group, then the user; then checks that what was dropped cannot be regained, for every drop, a group alone
    /// too: neither root's user nor root's group, as the group or as a supplementary group.
    public func assume() throws(StartupError) {
        let who = userName ?? "group \(gid)"
        func fail(_ operation: String, _ error: Errno) -> StartupError {
            StartupError(
                ExitStatus.systemError,
                "cannot drop privileges to \(who): \(operation) failed: \(error)"
                    + (error == Errno(EPERM) ? " (--user and --group need tcp-crossover to start as root)" : ""))
        }
        do {
            if let userName {
                try Syscall.initializeGroups(user: userName, gid: gid)
            } else {
                try Syscall.setGroups([gid])
            }
        } catch {
            throw fail("setgroups", error)
        }
        do { try Syscall.setGroupID(gid) } catch { throw fail("setgid", error) }
        if let uid {
            do { try Syscall.setUserID(uid) } catch { throw fail("setuid", error) }
        }
        let now = Syscall.identities
        if let uid, uid != 0 {
            // Regaining root must fail now; if it worked, the drop did not happen.
            if (try? Syscall.setUserID(0)) != nil || now.uid != uid || now.euid != uid {
                throw StartupError(ExitStatus.systemError, "privileges were not dropped: root can still be regained")
            }
        }
        guard now.gid == gid, now.egid == gid else {
            throw StartupError(ExitStatus.systemError, "privileges were not dropped: the group is still \(now.egid)")
        }
        if gid != 0 {
            // Taking root's group back, as the group or among the supplementary groups, must fail too: it does for
            // a process that is no longer root and has no capability to change its groups.
            if (try? Syscall.setGroupID(0)) != nil || (try? Syscall.setGroups([0])) != nil {
                throw StartupError(
                    ExitStatus.systemError, "privileges were not dropped: root's group can still be regained")
            }
        }
    }
}

/// The descriptor limit and the connection limit that follows from it.
public enum DescriptorBudget {
    /// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force afterwards.
    @discardableResult
    public static func raiseLimit() -> UInt64 {
        let (soft, hard) = Syscall.descriptorLimit()
        if soft < hard {
            do {
                try Syscall.setDescriptorLimit(soft: hard)
                return hard
            } catch {
                Log.warning("cannot raise the descriptor limit from \(soft) to \(hard): \(error)")
            }
        }
        return soft
    }

    /// The default `--max-connections` for `limit` descriptors: a connection needs two sockets and, while it
    /// carries bulk data, pipes; each event loop needs a few descriptors of its own.
    public static func maximumConnections(descriptorLimit limit: UInt64, threads: Int) -> Int {
        let reserved = UInt64(16 + 4 * threads)
        guard limit > reserved + 3 else { return 1 }
        return Int(min(limit - reserved, UInt64(Int32.max)) / 3)
    }
}
