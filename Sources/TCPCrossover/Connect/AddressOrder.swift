/// One address a connection may be made to, and the remote (`--remote` entry) it belongs to.
public struct ConnectTarget: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var address: SocketAddress
    /// The position of its `--remote` in the list: addresses of one remote (one host name) share it, and only
    /// they are tried side by side (Happy Eyeballs); the next remote is tried only once they have all failed.
    public var remote: Int

    public init(_ address: SocketAddress, remote: Int) {
        self.address = address
        self.remote = remote
    }

    public var description: String { address.description }
}

/// The order in which a connection tries its addresses: the remotes in their configured order (failover between
/// `--remote` entries is ordered), and within the addresses of one remote the two families taking turns, starting
/// with the family of its first address, as RFC 8305 section 4 asks (getaddrinfo's order, RFC 6724, decides which
/// family goes first): `[v6a, v6b, v4a, v4b]` is tried as `v6a, v4a, v6b, v4b`. A remote's addresses that are
/// not next to each other in `targets` (some are in back-off and went to the end) are ordered run by run.
public struct AddressOrder: Sequence, IteratorProtocol {
    private let targets: [ConnectTarget]
    private var position = 0
    /// The rest of the current run, in the order of the family that goes first and of the other.
    private var first: [ConnectTarget] = []
    private var other: [ConnectTarget] = []
    private var takeOther = false

    public init(_ targets: [ConnectTarget]) {
        self.targets = targets
    }

    /// The targets in the order they are tried.
    public static func ordered(_ targets: [ConnectTarget]) -> [ConnectTarget] {
        // Most remotes are one address, or addresses of one family: nothing to interleave, nothing to copy.
        var mixed = false
        var start = 0
        while start < targets.count && !mixed {
            var end = start + 1
            while end < targets.count && targets[end].remote == targets[start].remote {
                if targets[end].address.family != targets[start].address.family { mixed = true }
                end += 1
            }
            start = end
        }
        return mixed ? Array(AddressOrder(targets)) : targets
    }

    public mutating func next() -> ConnectTarget? {
        if first.isEmpty && other.isEmpty {
            guard position < targets.count else { return nil }
            let remote = targets[position].remote
            let family = targets[position].address.family
            while position < targets.count && targets[position].remote == remote {
                if targets[position].address.family == family {
                    first.append(targets[position])
                } else {
                    other.append(targets[position])
                }
                position += 1
            }
            // Stored reversed, so that the next one is taken from the end.
            first.reverse()
            other.reverse()
            takeOther = false
        }
        defer { takeOther.toggle() }
        if takeOther, let next = other.popLast() { return next }
        if let next = first.popLast() { return next }
        return other.popLast()
    }
}
