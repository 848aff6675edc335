import Glibc

/// Address conversion, interface names, and name resolution.
extension Syscall {
    // MARK: address conversion

    /// inet_pton(3) for AF_INET: the four bytes of an IPv4 address in dotted-quad form.
    static func parseIPv4(_ text: String) -> in_addr? {
        var address = in_addr()
        return inet_pton(AF_INET, text, &address) == 1 ? address : nil
    }

    /// inet_pton(3) for AF_INET6.
    static func parseIPv6(_ text: String) -> in6_addr? {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1 ? address : nil
    }

    /// inet_ntop(3).
    static func format(_ family: CInt, _ address: UnsafeRawPointer) -> String {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { text in
            guard inet_ntop(family, address, text.baseAddress!, socklen_t(text.count)) != nil else { return "?" }
            return String(cString: text.baseAddress!)
        }
    }

    /// if_nametoindex(3); nil for an unknown interface.
    static func interfaceIndex(_ name: String) -> UInt32? {
        let index = if_nametoindex(name)
        return index == 0 ? nil : index
    }

    /// if_indextoname(3); nil for an unknown index.
    static func interfaceName(_ index: UInt32) -> String? {
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(index, &name) != nil else { return nil }
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// getaddrinfo(3) for TCP, without AI_ADDRCONFIG (so that names of loopback addresses resolve on a host
    /// without other addresses): every address of `host`, in the resolver's order, with `port` set.
    static func resolve(_ host: String, port: UInt16) -> Result<[SocketAddress], ResolutionError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = CInt(SOCK_STREAM.rawValue)
        hints.ai_protocol = CInt(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &list)
        guard status == 0 else {
            let reason =
                status == EAI_SYSTEM ? Errno.current.description : String(cString: gai_strerror(status))
            return .failure(ResolutionError(host: host, reason: reason))
        }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var entry = list
        while let current = entry {
            if let raw = current.pointee.ai_addr, var address = SocketAddress(raw) {
                address.port = port
                if !addresses.contains(address) { addresses.append(address) }
            }
            entry = current.pointee.ai_next
        }
        if addresses.isEmpty { return .failure(ResolutionError(host: host, reason: "no IPv4 or IPv6 address")) }
        return .success(addresses)
    }

    /// strerror(3).
    static func errorString(_ value: CInt) -> String {
        String(cString: strerror(value))
    }
}

/// A host name that getaddrinfo(3) could not resolve.
public struct ResolutionError: Error, Equatable, Sendable, CustomStringConvertible {
    public let host: String
    public let reason: String

    public init(host: String, reason: String) {
        self.host = host
        self.reason = reason
    }

    public var description: String { "cannot resolve \(host): \(reason)" }
}
