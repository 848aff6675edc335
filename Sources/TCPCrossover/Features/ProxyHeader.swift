/// The HAProxy PROXY protocol header (https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt), sent as the
/// first bytes of every connection to the remote so that the backend learns the client's real address: version 1
/// is a line of text, version 2 a binary block.
public enum ProxyProtocol: String, Sendable, Equatable, CaseIterable {
    case v1
    case v2

    /// The header for a connection from `source` (the client) to `destination` (the address it connected to).
    /// IPv4 addresses carried in IPv6 (a dual-stack listener's `::ffff:a.b.c.d`) are sent as IPv4, so that the
    /// backend sees the address the client has.
    public func header(source: SocketAddress, destination: SocketAddress) -> [UInt8] {
        var source = source
        var destination = destination
        if let mappedSource = source.unmappedIPv4, let mappedDestination = destination.unmappedIPv4 {
            source = mappedSource
            destination = mappedDestination
        }
        switch self {
        case .v1: return Self.version1(source, destination)
        case .v2: return Self.version2(source, destination)
        }
    }

    /// `PROXY TCP4 192.0.2.1 198.51.100.1 51234 25\r\n`; `PROXY UNKNOWN\r\n` when the two families differ.
    private static func version1(_ source: SocketAddress, _ destination: SocketAddress) -> [UInt8] {
        guard source.family == destination.family else { return Array("PROXY UNKNOWN\r\n".utf8) }
        let protocolName = source.family == .ipv4 ? "TCP4" : "TCP6"
        // Addresses without a zone: the receiver parses them with inet_pton.
        let line =
            "PROXY \(protocolName) \(source.numericHost) \(destination.numericHost) "
            + "\(source.port) \(destination.port)\r\n"
        return Array(line.utf8)
    }

    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// The 12-byte signature, version 2 with the PROXY command, TCP over IPv4 or IPv6, the length, then the
    /// addresses and ports in network byte order. Two different families give the LOCAL command with no address
    /// (the receiver then uses the connection's own).
    private static func version2(_ source: SocketAddress, _ destination: SocketAddress) -> [UInt8] {
        var header = signature
        guard source.family == destination.family else {
            header += [0x20, 0x00, 0x00, 0x00]
            return header
        }
        let ipv4 = source.family == .ipv4
        header.append(0x21)  // version 2, PROXY
        header.append(ipv4 ? 0x11 : 0x21)  // TCP over IPv4 or IPv6 (STREAM)
        let length: UInt16 = ipv4 ? 12 : 36
        header += [UInt8(length >> 8), UInt8(length & 0xff)]
        header += source.addressBytes
        header += destination.addressBytes
        header += [UInt8(source.port >> 8), UInt8(source.port & 0xff)]
        header += [UInt8(destination.port >> 8), UInt8(destination.port & 0xff)]
        return header
    }
}
