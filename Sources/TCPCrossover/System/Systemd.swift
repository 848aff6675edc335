import CSystemd
import Glibc

/// libsystemd's sd-daemon calls: the socket activation protocol and service notification.
enum Systemd {
    /// sd_listen_fds_with_names(3) with unset_environment set: the descriptors systemd passed (from 3 on) with
    /// their FileDescriptorName=, and LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES removed from the environment so
    /// that nothing started later sees them. Empty when none were passed to this process.
    static func listenDescriptors() -> Result<[(fd: CInt, name: String?)], Errno> {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        if count < 0 { return .failure(Errno(-count)) }
        defer {
            if let names {
                for index in 0..<Int(count) { free(names[index]) }
                free(names)
            }
        }
        return .success(
            (0..<count).map { index in
                let name = names?[Int(index)].map { String(cString: $0) }
                return (SD_LISTEN_FDS_START + index, name == "unknown" ? nil : name)
            })
    }

    /// sd_notify(3); false when there is no notification socket ($NOTIFY_SOCKET unset) or sending failed.
    @discardableResult
    static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// sd_watchdog_enabled(3): the watchdog interval in microseconds when the service manager expects pings.
    static func watchdogInterval() -> UInt64? {
        var microseconds: UInt64 = 0
        return sd_watchdog_enabled(0, &microseconds) > 0 ? microseconds : nil
    }
}
