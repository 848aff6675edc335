import TCPCrossover

/// The address parsers: `Endpoint` (both port-zero policies), `NamedEndpoint`, `AddressRange` and
/// `SocketAddress(numericHost:)`, on the input as text. Properties: a parsed value prints as text that parses back
/// to the same value; an error message is one line of printable ASCII (the parsers escape what they quote).
public func fuzzEndpoint(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)

    for portZero in [Endpoint.PortZero.allowed, .refused] {
        do {
            let endpoint = try Endpoint(parsing: text, portZero: portZero)
            require(portZero == .allowed || endpoint.port != 0, "port 0 accepted with .refused", input: data)
            require(isPrintableASCII(endpoint.description), "description \(escaped(endpoint.description))", input: data)
            checkAddressHost(endpoint, input: data)
            do {
                let again = try Endpoint(parsing: endpoint.description, portZero: portZero)
                require(
                    again == endpoint,
                    "\(escaped(endpoint.description)) parses to \(again), not \(endpoint)", input: data)
            } catch {
                require(false, "\(escaped(endpoint.description)) does not parse back: \(error)", input: data)
            }
        } catch {
            checkError(error, input: data)
        }
    }

    do {
        let named = try NamedEndpoint(parsing: text, portZero: .allowed)
        require(named.name.map { !$0.isEmpty && !$0.utf8.contains(UInt8(ascii: ":")) } ?? true, "name", input: data)
        require(isPrintableASCII(named.description), "description \(escaped(named.description))", input: data)
        do {
            let again = try NamedEndpoint(parsing: named.description, portZero: .allowed)
            require(again == named, "\(escaped(named.description)) parses to something else", input: data)
        } catch {
            require(false, "\(escaped(named.description)) does not parse back: \(error)", input: data)
        }
    } catch {
        checkError(error, input: data)
    }

    do {
        let range = try AddressRange(parsing: text)
        require((0...(range.family == .ipv4 ? 32 : 128)).contains(range.prefixLength), "prefix length", input: data)
        do {
            let again = try AddressRange(parsing: range.description)
            require(again == range, "\(escaped(range.description)) parses to \(again)", input: data)
            // The network address itself is in the block.
            let network = range.description.split(separator: "/").first.map(String.init) ?? ""
            if let address = SocketAddress(numericHost: network) {
                require(range.contains(address), "\(range) does not contain \(network)", input: data)
            } else {
                require(false, "network \(escaped(network)) of \(range) is not an address", input: data)
            }
        } catch {
            require(false, "\(escaped(range.description)) does not parse back: \(error)", input: data)
        }
    } catch {
        checkError(error, input: data)
    }

    if let address = SocketAddress(numericHost: text) {
        require(address.port == 0 && address.scopeID == 0, "port or scope set: \(address)", input: data)
        let again = SocketAddress(numericHost: address.numericHost)
        require(again == address, "\(escaped(address.numericHost)) parses to \(String(describing: again))", input: data)
        require(
            address.family == .ipv4 ? address.addressBytes.count == 4 : address.addressBytes.count == 16,
            "address bytes", input: data)
    }
}

/// A numeric endpoint's address: its family matches the brackets, and a mapped IPv4 address unmaps to IPv4.
private func checkAddressHost(_ endpoint: Endpoint, input: [UInt8]) {
    guard case .address(let address) = endpoint.host else { return }
    require(address.port == endpoint.port, "address port \(address.port) != \(endpoint.port)", input: input)
    require(
        (address.family == .ipv6) == (input.first == UInt8(ascii: "[")),
        "family \(address.family)", input: input)
    if let unmapped = address.unmappedIPv4 {
        require(unmapped.family == .ipv4 && unmapped.port == address.port, "unmapped \(unmapped)", input: input)
    }
    if address.family == .ipv4 {
        require(address.scopeID == 0, "IPv4 address with a scope", input: input)
    }
}

private func checkError(_ error: AddressError, input: [UInt8]) {
    require(
        isPrintableASCII(error.description), "error message not one printable line: \(escaped(error.description))",
        input: input)
    require(!error.reason.isEmpty, "empty reason", input: input)
}
