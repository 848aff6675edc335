import Glibc
import TCPCrossover

/// The PROXY protocol header encoder, both versions, for two addresses made from the input:
///
///     byte 0       bit 0: source is IPv6, bit 1: destination is IPv6,
///                  bit 2: source is IPv4-mapped IPv6 (::ffff:0:0/96), bit 3: the same for the destination
///     bytes 1-16   source address bytes (an IPv4 address uses the first 4; the rest is kept as given)
///     bytes 17-32  destination address bytes
///     bytes 33-36  source port, destination port (big-endian)
///     bytes 37-44  source scope ID, destination scope ID
///
/// Missing bytes are 0. Properties: version 1 is one ASCII line of at most 107 bytes, `PROXY UNKNOWN\r\n` for two
/// families, otherwise `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` whose addresses parse back with inet_pton to the
/// addresses sent (an IPv4-mapped pair as IPv4); version 2 starts with the signature and its length field counts
/// the bytes that follow, which hold the same addresses and ports.
public func fuzzProxyHeader(_ data: [UInt8]) {
    var input = data
    if input.count < 45 { input += [UInt8](repeating: 0, count: 45 - input.count) }
    let flags = input[0]
    func address(_ offset: Int, ipv6: Bool, mapped: Bool, portAt: Int, scopeAt: Int) -> SocketAddress {
        var raw = Array(input[offset..<offset + 16])
        if ipv6 && mapped {
            raw.replaceSubrange(0..<12, with: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
        }
        var bytes: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &bytes) { $0.copyBytes(from: raw) }
        let port = UInt16(input[portAt]) << 8 | UInt16(input[portAt + 1])
        let scope = input[scopeAt..<scopeAt + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return SocketAddress(family: ipv6 ? .ipv6 : .ipv4, bytes: bytes, port: port, scopeID: scope)
    }
    let source = address(1, ipv6: flags & 1 != 0, mapped: flags & 4 != 0, portAt: 33, scopeAt: 37)
    let destination = address(17, ipv6: flags & 2 != 0, mapped: flags & 8 != 0, portAt: 35, scopeAt: 41)

    // What the header must carry: an IPv4-mapped pair as IPv4.
    var expectedSource = source
    var expectedDestination = destination
    if let s = source.unmappedIPv4, let d = destination.unmappedIPv4 {
        expectedSource = s
        expectedDestination = d
    }

    checkVersion1(
        ProxyProtocol.v1.header(source: source, destination: destination), expectedSource, expectedDestination,
        input: data)
    checkVersion2(
        ProxyProtocol.v2.header(source: source, destination: destination), expectedSource, expectedDestination,
        input: data)
}

private func checkVersion1(_ header: [UInt8], _ source: SocketAddress, _ destination: SocketAddress, input: [UInt8]) {
    let text = escaped(header)
    require(header.count <= 107, "v1 header of \(header.count) bytes: \(text)", input: input)
    require(header.allSatisfy { $0 < 0x80 }, "v1 header not ASCII: \(text)", input: input)
    require(header.suffix(2) == [0x0d, 0x0a], "v1 header does not end with CRLF: \(text)", input: input)
    require(
        !header.dropLast(2).contains(where: { $0 < 0x20 || $0 == 0x7f }), "control byte in v1 header: \(text)",
        input: input)
    guard source.family == destination.family else {
        require(header == Array("PROXY UNKNOWN\r\n".utf8), "two families but \(text)", input: input)
        return
    }
    let fields = header.dropLast(2).split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false).map {
        String(decoding: $0, as: UTF8.self)
    }
    require(fields.count == 6, "v1 header has \(fields.count) fields: \(text)", input: input)
    require(fields[0] == "PROXY", "v1 header does not start with PROXY: \(text)", input: input)
    require(fields[1] == (source.family == .ipv4 ? "TCP4" : "TCP6"), "v1 protocol \(fields[1]): \(text)", input: input)
    for (field, address) in [(fields[2], source), (fields[3], destination)] {
        require(
            parsed(field, address.family) == address.addressBytes, "v1 address \(field) is not \(address)", input: input
        )
    }
    for (field, port) in [(fields[4], source.port), (fields[5], destination.port)] {
        // Decimal without leading zeros, as the specification asks.
        require(
            UInt16(field) == port && (field == "0" || !field.hasPrefix("0")), "v1 port \(field) is not \(port)",
            input: input)
    }
}

private func checkVersion2(_ header: [UInt8], _ source: SocketAddress, _ destination: SocketAddress, input: [UInt8]) {
    let text = escaped(header)
    let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    require(header.count >= 16, "v2 header of \(header.count) bytes", input: input)
    require(Array(header.prefix(12)) == signature, "v2 signature: \(text)", input: input)
    let length = Int(header[14]) << 8 | Int(header[15])
    require(
        length == header.count - 16, "v2 length field \(length) but \(header.count - 16) bytes follow", input: input)
    guard source.family == destination.family else {
        // LOCAL, with no address.
        require(header[12] == 0x20 && header[13] == 0x00 && length == 0, "v2 LOCAL header: \(text)", input: input)
        return
    }
    require(header[12] == 0x21, "v2 version/command byte \(header[12])", input: input)
    let ipv4 = source.family == .ipv4
    require(header[13] == (ipv4 ? 0x11 : 0x21), "v2 family/protocol byte \(header[13])", input: input)
    let size = ipv4 ? 4 : 16
    require(length == 2 * size + 4, "v2 length \(length) for \(source.family)", input: input)
    var body = header[16...]
    let sourceBytes = Array(body.prefix(size))
    body = body.dropFirst(size)
    let destinationBytes = Array(body.prefix(size))
    body = body.dropFirst(size)
    let ports = Array(body)
    require(sourceBytes == source.addressBytes, "v2 source address", input: input)
    require(destinationBytes == destination.addressBytes, "v2 destination address", input: input)
    require(
        ports == [
            UInt8(source.port >> 8), UInt8(source.port & 0xff), UInt8(destination.port >> 8),
            UInt8(destination.port & 0xff),
        ], "v2 ports", input: input)
}

/// inet_pton of `text` for `family`: its 4 or 16 bytes, or nil.
private func parsed(_ text: String, _ family: SocketAddress.Family) -> [UInt8]? {
    if family == .ipv4 {
        var address = in_addr()
        guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
        return withUnsafeBytes(of: address) { Array($0) }
    }
    var address = in6_addr()
    guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
    return withUnsafeBytes(of: address) { Array($0) }
}
