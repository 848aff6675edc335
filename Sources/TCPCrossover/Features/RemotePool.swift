import Synchronization

/// Where the connections of one service go: the `--remote` endpoints in the order given, each with the addresses
/// of its last successful lookup that outgoing connections can use. Connects try the addresses in that order; an
/// address that failed (refused, unreachable, timed out) goes to the back for `backoff` milliseconds, so that
/// clients do not wait on it each time. Shared by every event loop, and updated by the resolver thread as host names
/// are looked up again.
public final class RemotePool: Sendable {
    /// The remotes as the user wrote them.
    public let endpoints: [Endpoint]
    /// The `--source` addresses: only addresses of their families are used (every family when there is none).
    public let sources: [SocketAddress]
    public let backoff: Int64
    private let state: Mutex<State>
    /// Set while some address is in back-off, so that a successful connect need not take the lock otherwise.
    private let anyFailed = Atomic<Bool>(false)

    private struct State {
        /// Per endpoint, in the configured order: the usable addresses of its last successful lookup.
        var perEndpoint: [[SocketAddress]]
        /// Every endpoint's addresses in order, without repeats, each with its endpoint's position: what connects
        /// try.
        var targets: [ConnectTarget] = []
        var failedUntil: [SocketAddress: Int64] = [:]

        init(perEndpoint: [[SocketAddress]]) {
            self.perEndpoint = perEndpoint
            targets = Self.flatten(perEndpoint)
        }

        static func flatten(_ perEndpoint: [[SocketAddress]]) -> [ConnectTarget] {
            var targets: [ConnectTarget] = []
            for (remote, found) in perEndpoint.enumerated() {
                for address in found where !targets.contains(where: { $0.address == address }) {
                    targets.append(ConnectTarget(address, remote: remote))
                }
            }
            return targets
        }
    }

    /// A pool whose endpoints have no addresses yet: `refresh` looks them up.
    public init(endpoints: [Endpoint], sources: [SocketAddress] = [], backoff: Int64 = 30_000) {
        self.endpoints = endpoints
        self.sources = sources
        self.backoff = backoff
        self.state = Mutex(State(perEndpoint: endpoints.map { _ in [] }))
    }

    /// A pool of numeric addresses, one endpoint each, as already looked up (for tests).
    public convenience init(addresses: [SocketAddress], backoff: Int64 = 30_000) {
        self.init(endpoints: addresses.map { Endpoint(host: .address($0), port: $0.port) }, backoff: backoff)
        _ = refresh()
    }

    /// Whether any remote is a host name, to be looked up again from time to time.
    public var hasNames: Bool {
        endpoints.contains {
            if case .name = $0.host { return true }
            return false
        }
    }

    /// The current addresses, in the configured order.
    public var addresses: [SocketAddress] { state.withLock { $0.targets.map(\.address) } }

    /// The addresses among `found` that an outgoing connection can use: all of them without `--source`, else
    /// those of a family that has a `--source` address (a connection of another family would leave from whatever
    /// address the kernel picks, which is what `--source` is there to prevent). The one place that decides it, at
    /// start and at every new lookup.
    public static func usable(_ found: [SocketAddress], sources: [SocketAddress]) -> [SocketAddress] {
        guard !sources.isEmpty else { return found }
        return found.filter { address in sources.contains { $0.family == address.family } }
    }

    /// Why an endpoint kept its last addresses at a lookup.
    public enum LookupProblem: Error, Equatable, Sendable, CustomStringConvertible {
        /// The name did not resolve.
        case unresolved(ResolutionError)
        /// The name resolved, but to no address of a `--source` family.
        case noUsableAddress(Endpoint, found: [SocketAddress])

        public var description: String {
            switch self {
            case .unresolved(let error):
                return error.description
            case .noUsableAddress(let endpoint, let found):
                return "\(endpoint) has no address of the family of a --source address (only "
                    + found.map(\.description).joined(separator: ", ") + ")"
            }
        }
    }

    /// What a lookup of every endpoint did.
    public struct Refresh: Sendable {
        /// The pool's addresses are not those of before.
        public var changed = false
        /// Per endpoint that kept its last addresses, why.
        public var problems: [LookupProblem] = []
    }

    /// Looks every endpoint up (host names with getaddrinfo, which blocks: not on an event loop) and takes the
    /// usable addresses of each. An endpoint whose lookup fails, or finds no usable address, keeps the addresses
    /// it had: one failed answer does not move its connections elsewhere. Back-offs are kept for the addresses that
    /// remain.
    public func refresh(
        resolve: (Endpoint) -> Result<[SocketAddress], ResolutionError> = { $0.resolve() }
    ) -> Refresh {
        var refresh = Refresh()
        var found: [[SocketAddress]?] = []
        for endpoint in endpoints {
            switch resolve(endpoint) {
            case .success(let addresses):
                let usable = Self.usable(addresses, sources: sources)
                if usable.isEmpty {
                    refresh.problems.append(.noUsableAddress(endpoint, found: addresses))
                    found.append(nil)
                } else {
                    found.append(usable)
                }
            case .failure(let error):
                refresh.problems.append(.unresolved(error))
                found.append(nil)
            }
        }
        state.withLock { state in
            var perEndpoint = state.perEndpoint
            for (index, addresses) in found.enumerated() {
                if let addresses { perEndpoint[index] = addresses }
            }
            let targets = State.flatten(perEndpoint)
            refresh.changed = targets != state.targets
            state.perEndpoint = perEndpoint
            state.targets = targets
            state.failedUntil = state.failedUntil.filter { failed in targets.contains { $0.address == failed.key } }
        }
        return refresh
    }

    /// The addresses to try for a new connection: those not in back-off first, in the configured order, then
    /// those in back-off (rather than no connection at all when every remote failed lately). `AddressOrder` then
    /// interleaves the families within each remote's addresses.
    public func candidates(now: Int64) -> [ConnectTarget] {
        state.withLock { state in
            if state.failedUntil.isEmpty { return state.targets }
            state.failedUntil = state.failedUntil.filter { $0.value > now }
            if state.failedUntil.isEmpty {
                anyFailed.store(false, ordering: .relaxed)
                return state.targets
            }
            let ready = state.targets.filter { state.failedUntil[$0.address] == nil }
            let waiting = state.targets.filter { state.failedUntil[$0.address] != nil }
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
}
