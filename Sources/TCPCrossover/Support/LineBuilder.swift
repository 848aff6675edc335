/// A log line built as bytes, in one buffer: the per-connection line is written once for every connection, and
/// building it from Strings (interpolation, inet_ntop, number descriptions) cost more than relaying a small
/// request did.
struct LineBuilder {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = 192) {
        bytes.reserveCapacity(capacity)
    }

    mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func append(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    /// `value` in decimal.
    mutating func append(_ value: UInt64) {
        var divisor: UInt64 = 1
        while value / divisor >= 10 { divisor *= 10 }
        var rest = value
        while divisor > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: rest / divisor))
            rest %= divisor
            divisor /= 10
        }
    }

    mutating func append(_ value: Int) {
        if value < 0 {
            bytes.append(UInt8(ascii: "-"))
            append(UInt64(value.magnitude))
        } else {
            append(UInt64(value))
        }
    }

    /// `value` in lowercase hexadecimal without leading zeros.
    mutating func appendHex(_ value: UInt16) {
        let digits: StaticString = "0123456789abcdef"
        var shift = 12
        while shift > 0 && (value >> UInt16(shift)) == 0 { shift -= 4 }
        digits.withUTF8Buffer { table in
            while shift >= 0 {
                bytes.append(table[Int((value >> UInt16(shift)) & 0xf)])
                shift -= 4
            }
        }
    }

    /// Milliseconds as seconds with three decimals: `0.012`, `12.345`.
    mutating func appendSeconds(milliseconds: Int64) {
        let value = UInt64(max(0, milliseconds))
        append(value / 1000)
        bytes.append(UInt8(ascii: "."))
        let fraction = value % 1000
        if fraction < 100 { bytes.append(UInt8(ascii: "0")) }
        if fraction < 10 { bytes.append(UInt8(ascii: "0")) }
        append(fraction)
    }

    /// The address as `SocketAddress.description` gives it: `192.0.2.1:80`, `[2001:db8::1]:80`.
    mutating func append(_ address: SocketAddress) {
        if address.family == .ipv6 { bytes.append(UInt8(ascii: "[")) }
        appendHost(address)
        if address.family == .ipv6 { bytes.append(UInt8(ascii: "]")) }
        bytes.append(UInt8(ascii: ":"))
        append(UInt64(address.port))
    }

    /// The address alone, as inet_ntop(3) writes it (RFC 5952 for IPv6: the longest run of two or more zero
    /// groups, the first of equal ones, becomes `::`; an IPv4-mapped or IPv4-compatible address ends in dotted
    /// form), with `%zone` for a scoped address.
    mutating func appendHost(_ address: SocketAddress) {
        let raw = address.bytes
        withUnsafeBytes(of: raw) { octets in
            if address.family == .ipv4 {
                appendDotted(octets, from: 0)
                return
            }
            var groups: (UInt16, UInt16, UInt16, UInt16, UInt16, UInt16, UInt16, UInt16) = (0, 0, 0, 0, 0, 0, 0, 0)
            withUnsafeMutableBytes(of: &groups) { words in
                for index in 0..<8 {
                    let value = UInt16(octets[2 * index]) << 8 | UInt16(octets[2 * index + 1])
                    words.storeBytes(of: value, toByteOffset: 2 * index, as: UInt16.self)
                }
            }
            withUnsafeBytes(of: groups) { words in
                func group(_ index: Int) -> UInt16 { words.load(fromByteOffset: 2 * index, as: UInt16.self) }
                // The longest run of zero groups, two or more long.
                var bestStart = -1
                var bestLength = 0
                var start = -1
                for index in 0...8 {
                    if index < 8 && group(index) == 0 {
                        if start < 0 { start = index }
                    } else if start >= 0 {
                        if index - start > bestLength {
                            (bestStart, bestLength) = (start, index - start)
                        }
                        start = -1
                    }
                }
                if bestLength < 2 { bestStart = -1 }
                var index = 0
                while index < 8 {
                    if index == bestStart {
                        bytes.append(UInt8(ascii: ":"))
                        if index + bestLength == 8 { bytes.append(UInt8(ascii: ":")) }
                        index += bestLength
                        continue
                    }
                    if index > 0 { bytes.append(UInt8(ascii: ":")) }
                    // The last 32 bits in dotted form, as inet_ntop writes ::a.b.c.d and ::ffff:a.b.c.d.
                    if index == 6 && bestStart == 0 && (bestLength == 6 || (bestLength == 5 && group(5) == 0xffff)) {
                        appendDotted(octets, from: 12)
                        break
                    }
                    appendHex(group(index))
                    index += 1
                }
            }
        }
        if address.scopeID != 0 {
            bytes.append(UInt8(ascii: "%"))
            if let name = Syscall.interfaceName(address.scopeID) {
                append(name)
            } else {
                append(UInt64(address.scopeID))
            }
        }
    }

    private mutating func appendDotted(_ octets: UnsafeRawBufferPointer, from offset: Int) {
        for index in 0..<4 {
            if index > 0 { bytes.append(UInt8(ascii: ".")) }
            append(UInt64(octets[offset + index]))
        }
    }

    var string: String { String(decoding: bytes, as: UTF8.self) }

    mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
    }
}
