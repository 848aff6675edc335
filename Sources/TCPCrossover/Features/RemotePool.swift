import Synchronization

/// Where the connections of one service go: the `--remote` endpoints in the order given, each with every address
/// its name has. Connects try the addresses in that order; an address that failed (refused, unreachable, timed
/// out) goes to the back for `backoff` milliseconds, so that clients do not wait on it each time. Shared by every
/// event loop, and updated by the resolver thread as host names are looked up again.
public final class RemotePool: Sendable {
    /// The remotes as the user wrote them.
    public let endpoints: [Endpoint]
    public let backoff: Int64
    private let state: Mutex<State>
    /// Set while some address is in back-off, so that a successful connect need not take the lock otherwise.
    private let anyFailed = Atomic<Bool>(false)

    private struct State {
        var addresses: [SocketAddress]
        var failedUntil: [SocketAddress: Int64] = [:]
    }

    public init(endpoints: [Endpoint], addresses: [SocketAddress], backoff: Int64 = 30_000) {
        self.endpoints = endpoints
        self.backoff = backoff
        self.state = Mutex(State(addresses: addresses))
    }

    /// Whether any remote is a host name, to be looked up again from time to time.
    public var hasNames: Bool {
        endpoints.contains {
            if case .name = $0.host { return true }
            return false
        }
    }

    /// The current addresses, in the configured order.
    public var addresses: [SocketAddress] { state.withLock { $0.addresses } }

    /// The addresses to try for a new connection: those not in back-off first, in the configured order, then
    /// those in back-off (rather than no connection at all when every remote failed lately).
    public func candidates(now: Int64) -> [SocketAddress] {
        state.withLock { state in
            if state.failedUntil.isEmpty { return state.addresses }
            state.failedUntil = state.failedUntil.filter { $0.value > now }
            if state.failedUntil.isEmpty {
                anyFailed.store(false, ordering: .relaxed)
                return state.addresses
            }
            let ready = state.addresses.filter { state.failedUntil[$0] == nil }
            let waiting = state.addresses.filter { state.failedUntil[$0] != nil }
            return ready + waiting
        }
    }

    /// A connect to `address` failed: put it back for a while.
    public func failed(_ address: SocketAddress, now: Int64) {
        state.withLock { $0.failedUntil[address] = now + backoff }
        anyFailed.store(true, ordering: .relaxed)
    }

    /// A connect to `address` worked: it is no longer in back-off.
    public func succeeded(_ address: SocketAddress) {
        guard anyFailed.load(ordering: .relaxed) else { return }
        state.withLock { _ = $0.failedUntil.removeValue(forKey: address) }
    }

    /// New addresses from a fresh lookup; back-offs are kept for the addresses that remain.
    public func replace(_ addresses: [SocketAddress]) {
        state.withLock { state in
            state.addresses = addresses
            state.failedUntil = state.failedUntil.filter { addresses.contains($0.key) }
        }
    }

    /// Looks every endpoint up (host names with getaddrinfo, which blocks: not on an event loop) and returns the
    /// addresses in order, without repeats; the failures, for the log.
    public func lookUp() -> (addresses: [SocketAddress], failures: [ResolutionError]) {
        var addresses: [SocketAddress] = []
        var failures: [ResolutionError] = []
        for endpoint in endpoints {
            switch endpoint.resolve() {
            case .success(let found):
                for address in found where !addresses.contains(address) { addresses.append(address) }
            case .failure(let error):
                failures.append(error)
            }
        }
        return (addresses, failures)
    }
}
