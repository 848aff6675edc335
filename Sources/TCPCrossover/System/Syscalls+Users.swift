import Glibc

/// Users, groups and dropping privileges.
extension Syscall {
    // MARK: users and privileges

    /// getpwnam_r(3): the uid, primary gid and name of a user, by name or number.
    static func user(_ name: String) -> (uid: uid_t, gid: gid_t, name: String)? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        if getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil {
            return (entry.pw_uid, entry.pw_gid, String(cString: entry.pw_name))
        }
        if let number = UInt32(name), getpwuid_r(number, &entry, &buffer, buffer.count, &result) == 0, result != nil {
            return (entry.pw_uid, entry.pw_gid, String(cString: entry.pw_name))
        }
        return nil
    }

    /// getgrnam_r(3): the gid of a group, by name or number.
    static func group(_ name: String) -> gid_t? {
        var entry = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        if getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil { return entry.gr_gid }
        if let number = UInt32(name), getgrgid_r(number, &entry, &buffer, buffer.count, &result) == 0, result != nil {
            return entry.gr_gid
        }
        return nil
    }

    /// initgroups(3): the supplementary groups of `user`, plus `gid`.
    static func initializeGroups(user: String, gid: gid_t) throws(Errno) {
        _ = try valueOrErrno { initgroups(user, gid) }
    }

    /// setgroups(2) to exactly `groups`.
    static func setGroups(_ groups: [gid_t]) throws(Errno) {
        _ = try valueOrErrno { setgroups(groups.count, groups) }
    }

    /// setgid(2).
    static func setGroupID(_ gid: gid_t) throws(Errno) {
        _ = try valueOrErrno { setgid(gid) }
    }

    /// setuid(2).
    static func setUserID(_ uid: uid_t) throws(Errno) {
        _ = try valueOrErrno { setuid(uid) }
    }

    /// getuid(2), geteuid(2), getgid(2), getegid(2).
    static var identities: (uid: uid_t, euid: uid_t, gid: gid_t, egid: gid_t) {
        (getuid(), geteuid(), getgid(), getegid())
    }
}
