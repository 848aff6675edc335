/// The warning at start when a relay hands the internet a backend's trust in local clients.
///
/// Through a relay every client reaches the remote from the relay's address. When the remote is on this machine,
/// that address is a local one (usually 127.0.0.1), which servers trust: Postfix relays mail for it, Dovecot allows
/// plaintext logins from it, Apache's `Require local` admits it. Without PROXY protocol the server cannot tell the
/// clients apart, so every client gets that trust. Said once, when the relay serves listeners (standalone, systemd
/// `Accept=no`, xinetd `wait = yes`); a process per connection (inetd, `Accept=yes`) does not check, so that its
/// start costs nothing more.
enum LocalRemoteWarning {
    /// The remotes among `services` that are on this machine: loopback addresses, or addresses `isOwnAddress`
    /// (a bind test, `Syscall.isOwnAddress`) finds to be the machine's own. Each address once, in order.
    static func localRemotes(_ services: [Service], isOwnAddress: (SocketAddress) -> Bool) -> [SocketAddress] {
        var found: [SocketAddress] = []
        for service in services {
            for address in service.pool.addresses where !found.contains(address) {
                if address.isLoopback || isOwnAddress(address) { found.append(address) }
            }
        }
        return found
    }

    /// The line to log for a relay to `localRemotes` without PROXY protocol; nil when there is nothing to say.
    static func message(localRemotes: [SocketAddress]) -> String? {
        guard !localRemotes.isEmpty else { return nil }
        let addresses = localRemotes.map(\.description).joined(separator: ", ")
        return "relaying to \(addresses), on this machine, without --proxy-protocol: the server there sees every "
            + "client as a local one and may trust it (a mail server may relay its mail); see SECURITY in "
            + "tcp-crossover(8) or the README, or give --no-proxy-warning"
    }

    /// Logs the warning (warning level) when `configuration` relays `services` to this machine without PROXY
    /// protocol and the warning is not turned off.
    static func check(_ configuration: Configuration, _ services: [Service]) {
        guard configuration.localRemoteWarning else { return }
        let remotes = localRemotes(
            services.filter { $0.options.proxyProtocol == nil }, isOwnAddress: Syscall.isOwnAddress)
        if let line = message(localRemotes: remotes) { Log.warning(line) }
    }
}
