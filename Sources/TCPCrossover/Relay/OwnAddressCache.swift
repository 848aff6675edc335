/// Which remote addresses (other than loopback ones, which always are) belong to this machine, as learned from the
/// source address the kernel picked for a connect to each: for an address of its own it picks that same address.
/// An answer is used for `lifetime` milliseconds, so that the loop asks (getsockname(2) after connect) once a minute
/// per address instead of on every connection; addresses that come or go meanwhile only cost the choice of
/// congestion control for that while, never a connection. One per event loop: no lock.
struct OwnAddressCache {
    static let lifetime: Int64 = 60_000
    /// More remembered addresses than this (a remote name whose addresses keep changing) start the cache afresh.
    static let capacity = 256

    private var answers: [SocketAddress: (onThisMachine: Bool, until: Int64)] = [:]

    /// Whether `remote` is this machine's own, if that was learned less than `lifetime` ago; nil when it must be
    /// learned again.
    func isOnThisMachine(_ remote: SocketAddress, now: Int64) -> Bool? {
        guard let answer = answers[remote], answer.until > now else { return nil }
        return answer.onThisMachine
    }

    /// Records what a connect to `remote` showed: the kernel chose `source` as the connection's local address.
    /// Returns whether `remote` is on this machine.
    mutating func learn(_ remote: SocketAddress, source: SocketAddress, now: Int64) -> Bool {
        let onThisMachine = remote.isOnThisMachine(localEnd: source)
        if answers[remote] == nil && answers.count >= Self.capacity { answers.removeAll(keepingCapacity: true) }
        answers[remote] = (onThisMachine, now + Self.lifetime)
        return onThisMachine
    }
}
