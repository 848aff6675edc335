import CLinux
import Glibc

/// libsystemd's sd-daemon calls: the socket activation protocol and service notification. The library is loaded
/// on first use (see CLinux/systemd.c), and only when the environment says systemd is involved.
enum Systemd {
    /// sd_listen_fds_with_names(3) with unset_environment set: the descriptors systemd passed (from 3 on) with
    /// their FileDescriptorName=, and LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES removed from the environment so
    /// that nothing started later sees them. Empty when none were passed to this process; libsystemd is not even
    /// loaded when $LISTEN_FDS is unset.
    static func listenDescriptors() -> Result<[(fd: CInt, name: String?)], StartupError> {
        guard Syscall.environment("LISTEN_FDS") != nil else { return .success([]) }
        if let error = tcx_systemd_load() {
            return .failure(
                StartupError(ExitStatus.systemError, "LISTEN_FDS is set, but \(String(cString: error))"))
        }
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = tcx_sd_listen_fds_with_names(1, &names)
        if count < 0 {
            return .failure(StartupError(ExitStatus.usage, "LISTEN_FDS is not valid: \(Errno(-count))"))
        }
        defer {
            if let names {
                for index in 0..<Int(count) { free(names[index]) }
                free(names)
            }
        }
        return .success(
            (0..<count).map { index in
                let name = names?[Int(index)].map { String(cString: $0) }
                return (3 + index, name == "unknown" ? nil : name)
            })
    }

    /// Whether the service manager listens for notifications ($NOTIFY_SOCKET is set).
    static var notificationsExpected: Bool { Syscall.environment("NOTIFY_SOCKET") != nil }

    /// sd_notify(3); false when there is no notification socket or sending failed.
    @discardableResult
    static func notify(_ state: String) -> Bool {
        tcx_sd_notify(0, state) > 0
    }

    /// sd_pid_notify_with_fds(3) with `FDSTORE=1` and `FDNAME=name`: systemd keeps a duplicate of `fd` in the
    /// service's file descriptor store and passes it to the service's next process (in LISTEN_FDS, under that
    /// name). False when the notification could not be sent. `FDPOLL=0`: systemd would otherwise drop a stored
    /// socket on EPOLLHUP, which a socket whose two ends of stream have both passed reports, while bytes for it
    /// may still wait in a pipe; the next process takes every stored descriptor out of the store itself.
    static func store(_ fd: CInt, name: String) -> Bool {
        var descriptor = fd
        return tcx_sd_notify_with_fds("FDSTORE=1\nFDPOLL=0\nFDNAME=\(name)", &descriptor, 1) > 0
    }

    /// `FDSTOREREMOVE=1` with `FDNAME=name`: systemd closes its duplicates stored under that name. A process that
    /// adopts stored descriptors removes them at once, so that the store holds no connection that has ended.
    @discardableResult
    static func removeStored(name: String) -> Bool {
        tcx_sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=\(name)") > 0
    }

    /// sd_watchdog_enabled(3): the watchdog interval in microseconds when the service manager expects pings.
    static func watchdogInterval() -> UInt64? {
        var microseconds: UInt64 = 0
        return tcx_sd_watchdog_enabled(0, &microseconds) > 0 ? microseconds : nil
    }
}
