import Glibc

/// An IPv4 or IPv6 socket address: what `sockaddr_in` and `sockaddr_in6` hold, as a small value.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    public enum Family: Sendable {
        case ipv4, ipv6
    }

    public var family: Family
    /// The port, in host byte order.
    public var port: UInt16
    /// The address bytes in network order; an IPv4 address uses the first four.
    public var bytes: (UInt64, UInt64)
    /// The IPv6 scope (interface index) of a link-local address; 0 otherwise.
    public var scopeID: UInt32

    public init(family: Family, bytes: (UInt64, UInt64), port: UInt16, scopeID: UInt32 = 0) {
        self.family = family
        self.bytes = bytes
        self.port = port
        self.scopeID = scopeID
    }

    public init(_ address: in_addr, port: UInt16) {
        var bytes: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &bytes) { raw in
            withUnsafeBytes(of: address) { raw.copyMemory(from: $0) }
        }
        self.init(family: .ipv4, bytes: bytes, port: port)
    }

    public init(_ address: in6_addr, port: UInt16, scopeID: UInt32 = 0) {
        var bytes: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &bytes) { raw in
            withUnsafeBytes(of: address) { raw.copyMemory(from: $0) }
        }
        self.init(family: .ipv6, bytes: bytes, port: port, scopeID: scopeID)
    }

    /// A numeric IPv4 or IPv6 address without port or zone (`192.0.2.10`, `2001:db8::10`), with port 0; nil for
    /// anything else.
    public init?(numericHost text: String) {
        // inet_pton stops at a NUL: what follows one must not pass unseen.
        guard text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return nil }
        if let address = Syscall.parseIPv4(text) {
            self.init(address, port: 0)
        } else if let address = Syscall.parseIPv6(text) {
            self.init(address, port: 0)
        } else {
            return nil
        }
    }

    /// The address in a `sockaddr`, or nil for a family other than AF_INET and AF_INET6.
    init?(_ pointer: UnsafePointer<sockaddr>) {
        switch CInt(pointer.pointee.sa_family) {
        case AF_INET:
            let address = UnsafeRawPointer(pointer).loadUnaligned(as: sockaddr_in.self)
            self.init(address.sin_addr, port: UInt16(bigEndian: address.sin_port))
        case AF_INET6:
            let address = UnsafeRawPointer(pointer).loadUnaligned(as: sockaddr_in6.self)
            self.init(address.sin6_addr, port: UInt16(bigEndian: address.sin6_port), scopeID: address.sin6_scope_id)
        default:
            return nil
        }
    }

    init?(_ storage: sockaddr_storage) {
        var storage = storage
        let address = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress($0) }
        }
        guard let address else { return nil }
        self = address
    }

    /// A placeholder for an address the kernel did not report.
    static let unspecified = SocketAddress(family: .ipv4, bytes: (0, 0), port: 0)

    public var addressFamily: CInt { family == .ipv4 ? AF_INET : AF_INET6 }

    /// Calls `body` with this address as a `sockaddr` pointer and its length.
    func withSockAddr<Result, Failure: Error>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        switch family {
        case .ipv4:
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &address.sin_addr) { raw in
                withUnsafeBytes(of: bytes) { raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<4])) }
            }
            return try withUnsafePointer(to: &address) { (pointer) throws(Failure) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(Failure) in
                    try body(raw, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        case .ipv6:
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            address.sin6_scope_id = scopeID
            withUnsafeMutableBytes(of: &address.sin6_addr) { raw in
                withUnsafeBytes(of: bytes) { raw.copyMemory(from: $0) }
            }
            return try withUnsafePointer(to: &address) { (pointer) throws(Failure) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(Failure) in
                    try body(raw, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
    }

    /// The address bytes: 4 for IPv4, 16 for IPv6.
    public var addressBytes: [UInt8] {
        withUnsafeBytes(of: bytes) { Array($0.prefix(family == .ipv4 ? 4 : 16)) }
    }

    /// The address alone, without port: `192.0.2.1`, `2001:db8::1`, `fe80::1%eth0`.
    public var host: String {
        var line = LineBuilder(capacity: 48)
        line.appendHost(self)
        return line.string
    }

    /// The address in inet_ntop(3) form, without a zone: `192.0.2.1`, `fe80::1`.
    public var numericHost: String {
        var line = LineBuilder(capacity: 48)
        var unscoped = self
        unscoped.scopeID = 0
        line.appendHost(unscoped)
        return line.string
    }

    /// `192.0.2.1:80` or `[2001:db8::1]:80`, the form the command line takes.
    public var description: String {
        var line = LineBuilder(capacity: 56)
        line.append(self)
        return line.string
    }

    /// True for `::` and `0.0.0.0`.
    public var isUnspecified: Bool { bytes == (0, 0) }

    /// True for an address of this machine's loopback interface: `127.0.0.0/8`, `::1`, and `127.0.0.0/8` mapped into
    /// IPv6 (`::ffff:127.0.0.1`, a local IPv4 client of a dual-stack listener).
    public var isLoopback: Bool {
        withUnsafeBytes(of: bytes) { raw in
            if family == .ipv4 { return raw[0] == 127 }
            let zeros = raw[0..<10].allSatisfy { $0 == 0 }
            if zeros && raw[10] == 0xff && raw[11] == 0xff { return raw[12] == 127 }
            return zeros && raw[10..<15].allSatisfy { $0 == 0 } && raw[15] == 1
        }
    }

    /// Whether a peer at this address is on this machine, for a socket whose own end is `localEnd`: a loopback
    /// address, or the very address of the socket's own end. A connection between two addresses of one machine goes
    /// through its loopback interface, and the kernel gives it the destination as its source, so a client on this
    /// machine that connects to one of its addresses comes from that same address, and so does a connection to a
    /// remote at one of them.
    public func isOnThisMachine(localEnd: SocketAddress) -> Bool {
        isLoopback || (family == localEnd.family && bytes == localEnd.bytes && !isUnspecified)
    }

    /// An IPv4 address carried in an IPv6 one (`::ffff:192.0.2.1`), as a dual-stack listener reports IPv4
    /// clients; nil otherwise.
    public var unmappedIPv4: SocketAddress? {
        guard family == .ipv6 else { return nil }
        let raw = addressBytes
        guard raw[0..<10].allSatisfy({ $0 == 0 }) && raw[10] == 0xff && raw[11] == 0xff else { return nil }
        var bytes: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &bytes) { $0.copyBytes(from: raw[12..<16]) }
        return SocketAddress(family: .ipv4, bytes: bytes, port: port)
    }

    /// An IPv4 address in its IPv4-mapped IPv6 form (`::ffff:192.0.2.1`); an IPv6 address as it is.
    public var mappedIPv6: SocketAddress {
        guard family == .ipv4 else { return self }
        var raw = [UInt8](repeating: 0, count: 16)
        raw[10] = 0xff
        raw[11] = 0xff
        raw.replaceSubrange(12..<16, with: addressBytes)
        var bytes: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &bytes) { $0.copyBytes(from: raw) }
        return SocketAddress(family: .ipv6, bytes: bytes, port: port)
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.family == rhs.family && lhs.port == rhs.port && lhs.bytes == rhs.bytes && lhs.scopeID == rhs.scopeID
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(family)
        hasher.combine(port)
        hasher.combine(bytes.0)
        hasher.combine(bytes.1)
        hasher.combine(scopeID)
    }
}
