/// A block of addresses written in CIDR form: `192.0.2.0/24`, `2001:db8::/32`, or one address (`192.0.2.7`).
public struct AddressRange: Equatable, Sendable, CustomStringConvertible {
    public let family: SocketAddress.Family
    /// The network's bytes, as `SocketAddress.bytes` lays them out, with the host bits cleared.
    private let network: (UInt64, UInt64)
    private let mask: (UInt64, UInt64)
    public let prefixLength: Int

    public init(parsing text: String) throws(AddressError) {
        let bytes = Array(text.utf8)
        guard bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw AddressError(
                text: text, reason: "it contains a space, control or non-ASCII character",
                accepted: "ADDRESS/PREFIX, such as 192.0.2.0/24 or 2001:db8::/32")
        }
        let slash = bytes.firstIndex(of: UInt8(ascii: "/"))
        let addressText = String(decoding: bytes[..<(slash ?? bytes.endIndex)], as: UTF8.self)
        func fail(_ reason: String) -> AddressError {
            AddressError(text: text, reason: reason, accepted: "ADDRESS/PREFIX, such as 192.0.2.0/24 or 2001:db8::/32")
        }
        let address: SocketAddress
        if let ipv4 = Syscall.parseIPv4(addressText) {
            address = SocketAddress(ipv4, port: 0)
        } else if let ipv6 = Syscall.parseIPv6(addressText) {
            address = SocketAddress(ipv6, port: 0)
        } else {
            throw fail("'\(addressText)' is not an IPv4 or IPv6 address")
        }
        let bits = address.family == .ipv4 ? 32 : 128
        var prefix = bits
        if let slash {
            let digits = bytes[(slash + 1)...]
            guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let value = Int(String(decoding: digits, as: UTF8.self)), value <= bits
            else {
                throw fail("the prefix length must be a number from 0 to \(bits)")
            }
            prefix = value
        }
        var maskBytes = [UInt8](repeating: 0, count: 16)
        for bit in 0..<prefix { maskBytes[bit / 8] |= 0x80 >> UInt8(bit % 8) }
        var mask: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &mask) { $0.copyBytes(from: maskBytes) }
        self.family = address.family
        self.mask = mask
        self.network = (address.bytes.0 & mask.0, address.bytes.1 & mask.1)
        self.prefixLength = prefix
    }

    /// Whether `address` is in the block. An IPv4 client is the same client whether a dual-stack listener reports
    /// it in IPv6 (`::ffff:a.b.c.d`) or an IPv4 listener in IPv4: it is matched in IPv4 form against IPv4 blocks
    /// and in IPv4-mapped form against IPv6 blocks (so `::ffff:0:0/96` holds every IPv4 client).
    public func contains(_ address: SocketAddress) -> Bool {
        var candidate = address
        if family == .ipv4 {
            guard let ipv4 = address.family == .ipv4 ? address : address.unmappedIPv4 else { return false }
            candidate = ipv4
        } else if address.family == .ipv4 {
            candidate = address.mappedIPv6
        }
        return (candidate.bytes.0 & mask.0) == network.0 && (candidate.bytes.1 & mask.1) == network.1
    }

    public var description: String {
        let host = SocketAddress(family: family, bytes: network, port: 0).numericHost
        return "\(host)/\(prefixLength)"
    }

    public static func == (lhs: AddressRange, rhs: AddressRange) -> Bool {
        lhs.family == rhs.family && lhs.network == rhs.network && lhs.prefixLength == rhs.prefixLength
    }
}

/// `--allow` and `--deny`: a client is refused when it is in a denied block, or when blocks are allowed and it is
/// in none of them. Refused clients are closed before any connection to the remote is made.
public struct AccessRules: Equatable, Sendable {
    public var allow: [AddressRange] = []
    public var deny: [AddressRange] = []

    public init(allow: [AddressRange] = [], deny: [AddressRange] = []) {
        self.allow = allow
        self.deny = deny
    }

    public var isEmpty: Bool { allow.isEmpty && deny.isEmpty }

    /// Why `client` is refused, or nil when it may connect.
    public func refusal(of client: SocketAddress) -> String? {
        if let rule = deny.first(where: { $0.contains(client) }) { return "by --deny \(rule)" }
        if !allow.isEmpty && !allow.contains(where: { $0.contains(client) }) { return "not in any --allow" }
        return nil
    }
}
