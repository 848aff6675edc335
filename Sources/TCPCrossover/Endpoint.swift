/// An address as the user writes it on the command line: `[2001:db8::1]:25`, `[fe80::1%eth0]:22`,
/// `127.0.0.1:80` or `mail.example.org:25`.
///
/// Parsing works on the UTF-8 bytes of the text, never on `Character`s, so that no combination of code points can
/// make a bracket or a colon disappear into a grapheme cluster.
public struct Endpoint: Equatable, Sendable, CustomStringConvertible {
    public enum Host: Equatable, Sendable {
        /// A numeric IPv4 or IPv6 address; its port is the endpoint's port.
        case address(SocketAddress)
        /// A host name, resolved with getaddrinfo(3) to every address it has.
        case name(String)
    }

    public var host: Host
    public var port: UInt16

    public init(host: Host, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Whether port 0 (the kernel picks a free port) is accepted: for addresses to listen on, not for remotes.
    public enum PortZero: Sendable {
        case allowed, refused
    }

    public static let accepted = "[IPv6]:PORT, [IPv6%INTERFACE]:PORT, IPv4:PORT or HOSTNAME:PORT"

    /// Parses `text`; throws an `AddressError` that says what is wrong and what would be accepted.
    public init(parsing text: String, portZero: PortZero = .refused) throws(AddressError) {
        let bytes = Array(text.utf8)
        func fail(_ reason: String) -> AddressError { AddressError(text: text, reason: reason) }

        guard !bytes.isEmpty else { throw fail("the address is empty") }
        if let bad = bytes.first(where: { $0 < 0x21 || $0 > 0x7e }) {
            throw fail(bad < 0x80 ? "it contains a space or control character" : "it contains a non-ASCII character")
        }

        let hostBytes: ArraySlice<UInt8>
        let portBytes: ArraySlice<UInt8>
        let bracketed = bytes[0] == UInt8(ascii: "[")
        if bracketed {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")) else {
                throw fail("'[' without a closing ']'")
            }
            hostBytes = bytes[1..<close]
            let rest = bytes[(close + 1)...]
            guard rest.first == UInt8(ascii: ":") else {
                throw fail(rest.isEmpty ? "the port is missing (write [ADDRESS]:PORT)" : "expected ':' after ']'")
            }
            portBytes = rest.dropFirst()
        } else {
            guard let colon = bytes.lastIndex(of: UInt8(ascii: ":")) else {
                throw fail("the port is missing (write ADDRESS:PORT)")
            }
            hostBytes = bytes[..<colon]
            portBytes = bytes[(colon + 1)...]
            if hostBytes.contains(UInt8(ascii: ":")) {
                throw fail(
                    "an IPv6 address with a port needs brackets: write [\(String(decoding: hostBytes, as: UTF8.self))]:\(String(decoding: bytes[(colon + 1)...], as: UTF8.self))"
                )
            }
            if hostBytes.contains(UInt8(ascii: "]")) { throw fail("']' without an opening '['") }
        }

        let port = try Self.parsePort(portBytes, portZero: portZero, fail: fail)
        guard !hostBytes.isEmpty else {
            throw fail("the host is missing (use [::]:\(port) or 0.0.0.0:\(port) for every address)")
        }
        self.port = port
        self.host =
            bracketed
            ? try Self.parseIPv6(hostBytes, port: port, fail: fail)
            : try Self.parseIPv4OrName(hostBytes, port: port, fail: fail)
    }

    private static func parsePort(
        _ bytes: ArraySlice<UInt8>,
        portZero: PortZero,
        fail: (String) -> AddressError
    ) throws(AddressError) -> UInt16 {
        guard !bytes.isEmpty else { throw fail("the port is missing") }
        guard bytes.allSatisfy(isDigit) else {
            throw fail("the port '\(String(decoding: bytes, as: UTF8.self))' is not a number")
        }
        var value = 0
        for digit in bytes {
            value = value * 10 + Int(digit - UInt8(ascii: "0"))
            if value > 65535 { break }
        }
        let lowest = portZero == .allowed ? 0 : 1
        guard value >= lowest && value <= 65535 else {
            throw fail("the port \(String(decoding: bytes, as: UTF8.self)) is out of range (\(lowest)-65535)")
        }
        return UInt16(value)
    }

    private static func parseIPv6(
        _ bytes: ArraySlice<UInt8>,
        port: UInt16,
        fail: (String) -> AddressError
    ) throws(AddressError) -> Host {
        let percent = bytes.firstIndex(of: UInt8(ascii: "%"))
        let addressBytes = bytes[..<(percent ?? bytes.endIndex)]
        let addressText = String(decoding: addressBytes, as: UTF8.self)
        guard addressBytes.allSatisfy({ isHexDigit($0) || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") }),
            let address = Syscall.parseIPv6(addressText)
        else {
            throw fail("'\(addressText)' is not an IPv6 address")
        }
        var scopeID: UInt32 = 0
        if let percent {
            let zoneBytes = bytes[(percent + 1)...]
            let zone = String(decoding: zoneBytes, as: UTF8.self)
            guard !zoneBytes.isEmpty else { throw fail("the interface after '%' is missing") }
            if zoneBytes.allSatisfy(isDigit), let index = UInt32(zone), index > 0 {
                scopeID = index
            } else if let index = Syscall.interfaceIndex(zone) {
                scopeID = index
            } else {
                throw fail("there is no network interface '\(zone)'")
            }
        }
        return .address(SocketAddress(address, port: port, scopeID: scopeID))
    }

    private static func parseIPv4OrName(
        _ bytes: ArraySlice<UInt8>,
        port: UInt16,
        fail: (String) -> AddressError
    ) throws(AddressError) -> Host {
        let text = String(decoding: bytes, as: UTF8.self)
        if bytes.allSatisfy({ isDigit($0) || $0 == UInt8(ascii: ".") }) {
            guard let address = Syscall.parseIPv4(text) else {
                throw fail("'\(text)' is not an IPv4 address (four numbers 0-255 separated by dots)")
            }
            return .address(SocketAddress(address, port: port))
        }
        guard bytes.count <= 253 else { throw fail("the host name is longer than 253 characters") }
        let labels = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        for (index, label) in labels.enumerated() {
            // A trailing dot (a fully qualified name) leaves one empty label at the end.
            if label.isEmpty && index == labels.count - 1 && index > 0 { continue }
            guard !label.isEmpty, label.count <= 63 else {
                throw fail("'\(text)' is not a host name (empty or over-long label)")
            }
            guard label.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") })
            else {
                throw fail("'\(text)' is not a host name (letters, digits, '-', '_' and '.' only)")
            }
        }
        return .name(text)
    }

    /// The addresses this endpoint stands for: itself for a numeric address, every address getaddrinfo(3) gives
    /// for a name.
    public func resolve() -> Result<[SocketAddress], ResolutionError> {
        switch host {
        case .address(let address): return .success([address])
        case .name(let name): return Syscall.resolve(name, port: port)
        }
    }

    public var description: String {
        switch host {
        case .address(let address): return address.description
        case .name(let name): return "\(name):\(port)"
        }
    }
}

/// A malformed address on the command line.
public struct AddressError: Error, Equatable, Sendable, CustomStringConvertible {
    public let text: String
    public let reason: String
    /// What would have been accepted.
    public let accepted: String

    public init(text: String, reason: String, accepted: String = Endpoint.accepted) {
        self.text = text
        self.reason = reason
        self.accepted = accepted
    }

    public var description: String {
        "invalid address '\(printable(text))': \(printable(reason)); expected \(accepted)"
    }
}

/// `text` with every byte outside printable ASCII written as `\xNN`, so that an error message stays one line.
func printable(_ text: String) -> String {
    var plain = true
    for byte in text.utf8 where byte < 0x20 || byte >= 0x7f {
        plain = false
        break
    }
    if plain { return text }
    var result = ""
    for byte in text.utf8 {
        if byte >= 0x20 && byte < 0x7f {
            result.unicodeScalars.append(Unicode.Scalar(byte))
        } else {
            let hex = String(byte, radix: 16, uppercase: true)
            result += "\\x" + (hex.count == 1 ? "0" + hex : hex)
        }
    }
    return result
}

private func isDigit(_ byte: UInt8) -> Bool {
    byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
}

private func isHexDigit(_ byte: UInt8) -> Bool {
    isDigit(byte) || (byte | 0x20 >= UInt8(ascii: "a") && byte | 0x20 <= UInt8(ascii: "f"))
}

private func isAlphanumeric(_ byte: UInt8) -> Bool {
    isDigit(byte) || (byte | 0x20 >= UInt8(ascii: "a") && byte | 0x20 <= UInt8(ascii: "z"))
}
