/// A bad option value: one line that names the value and what would be accepted.
public struct OptionError: Error, CustomStringConvertible, Sendable {
    public let description: String

    init(_ description: String) {
        self.description = description
    }
}

/// The options as typed, before validation: what the command's swift-argument-parser parser and `QuickCommandLine`
/// both produce, and the one place where they become a `Configuration`.
public struct Options: Equatable, Sendable {
    public var local: [String]
    public var remote: [String]
    public var pidfile: String?
    public var bufferSize: String
    public var pipeMemory: String?
    public var debug: Bool
    public var foreground: Bool
    public var dualStack: Bool
    public var noProxyWarning: Bool
    /// The options that may be given per service (`OptionDescription.perService`) keep every value, as typed:
    /// `[NAME=]VALUE`.
    public var connectTimeout: [String]
    public var connectDeadline: [String]
    public var threads: String
    public var exitIdleTime: String?
    public var maxConnections: String?
    public var maxConnectionsPerClient: [String]
    public var maxNewConnectionsPerClient: [String]
    public var clientPrefixLength: [String]
    public var idleTimeout: [String]
    public var keepalive: [String]
    public var shutdownTimeout: String
    public var user: String?
    public var group: String?
    public var proxyProtocol: [String]
    public var source: [String]
    public var allow: [String]
    public var deny: [String]
    public var resolveInterval: String
    public var loopbackCongestionControl: String
    public var loopbackMSS: String
    public var metrics: String?
    public var logConnections: [String]
    public var splice: [String]

    public static let defaults = Options()

    public init(
        local: [String] = [], remote: [String] = [], pidfile: String? = nil, bufferSize: String = "1m",
        pipeMemory: String? = nil, debug: Bool = false, foreground: Bool = false, dualStack: Bool = false,
        connectTimeout: [String] = [], connectDeadline: [String] = [], threads: String = "0",
        exitIdleTime: String? = nil, maxConnections: String? = nil, maxConnectionsPerClient: [String] = [],
        maxNewConnectionsPerClient: [String] = [], clientPrefixLength: [String] = [], idleTimeout: [String] = [],
        keepalive: [String] = [], shutdownTimeout: String = "10", user: String? = nil, group: String? = nil,
        proxyProtocol: [String] = [], source: [String] = [], allow: [String] = [], deny: [String] = [],
        resolveInterval: String = "60", loopbackCongestionControl: String = "reno", loopbackMSS: String = "auto",
        noProxyWarning: Bool = false, metrics: String? = nil, logConnections: [String] = [],
        splice: [String] = []
    ) {
        self.local = local
        self.remote = remote
        self.pidfile = pidfile
        self.bufferSize = bufferSize
        self.pipeMemory = pipeMemory
        self.debug = debug
        self.foreground = foreground
        self.dualStack = dualStack
        self.connectTimeout = connectTimeout
        self.connectDeadline = connectDeadline
        self.threads = threads
        self.exitIdleTime = exitIdleTime
        self.maxConnections = maxConnections
        self.maxConnectionsPerClient = maxConnectionsPerClient
        self.maxNewConnectionsPerClient = maxNewConnectionsPerClient
        self.clientPrefixLength = clientPrefixLength
        self.idleTimeout = idleTimeout
        self.keepalive = keepalive
        self.shutdownTimeout = shutdownTimeout
        self.user = user
        self.group = group
        self.proxyProtocol = proxyProtocol
        self.source = source
        self.allow = allow
        self.deny = deny
        self.resolveInterval = resolveInterval
        self.loopbackCongestionControl = loopbackCongestionControl
        self.loopbackMSS = loopbackMSS
        self.noProxyWarning = noProxyWarning
        self.metrics = metrics
        self.logConnections = logConnections
        self.splice = splice
    }

    /// The options as a configuration; throws a `ValidationError` naming the bad value and what is accepted.
    public func configuration() throws -> Configuration {
        guard !remote.isEmpty else {
            throw OptionError("--remote is missing: give the address to relay to, such as --remote 127.0.0.1:25")
        }
        var configuration = Configuration(
            remotes: try remote.map { try endpoint($0, option: "--remote", portZero: .refused) })
        configuration.locals = try local.map { try endpoint($0, option: "--local", portZero: .allowed) }
        configuration.pidfile = try pidfile.map { path in
            guard !path.isEmpty else { throw OptionError("--pidfile needs a file name") }
            return path
        }
        configuration.foreground = foreground
        configuration.debug = debug
        configuration.dualStack = dualStack
        configuration.relay.pipeSize = try size(bufferSize, option: "--bs", range: 4096...(16 << 20))
        configuration.relay.pipeMemory = try pipeMemory.map { text in
            text == "0" ? 0 : try size(text, option: "--pipe-memory", range: 4096...(1 << 40))
        }
        configuration.relay.threads = try count(
            threads, option: "--threads", range: 0...1024, meaning: "0 (one per CPU)")
        configuration.exitIdleTime = try exitIdleTime.map { try milliseconds($0, option: "--exit-idle-time") }
        configuration.maximumConnections = try maxConnections.map {
            try count($0, option: "--max-connections", range: 1...10_000_000)
        }
        configuration.relay.shutdownTimeout = try milliseconds(
            shutdownTimeout, option: "--shutdown-timeout", zero: true)
        // Checked one by one rather than through a collection of pairs: each new generic type instantiated at
        // start costs some 35,000 instructions, and a process starts per connection under inetd.
        try checkAccountName(user, option: "--user")
        try checkAccountName(group, option: "--group")
        configuration.user = user
        configuration.group = group
        try setServiceOptions(of: &configuration)
        configuration.relay.resolveInterval = try milliseconds(
            resolveInterval, option: "--resolve-interval", zero: true)
        configuration.relay.loopbackCongestionControl = try congestionControl(loopbackCongestionControl)
        switch loopbackMSS {
        case "system": configuration.relay.loopbackMSS = .system
        case "auto": configuration.relay.loopbackMSS = .standard
        default:
            guard let segment = Int(loopbackMSS), (536...65495).contains(segment) else {
                throw OptionError(
                    "--loopback-mss '\(loopbackMSS)' is out of range; expected 536 to 65495, auto or system")
            }
            configuration.relay.loopbackMSS = .fixed(segment)
        }
        configuration.localRemoteWarning = !noProxyWarning
        configuration.metrics = try metrics.map { text in
            do {
                return try Endpoint(parsing: text, portZero: .allowed)
            } catch {
                throw OptionError("--metrics: \(error)")
            }
        }
        return configuration
    }
}

extension Options {
    /// Fills `relay.service` from the values without a name and `serviceOptions` for every name that has values of
    /// its own; a name that no `--remote` has is an error, as it would serve nothing.
    fileprivate func setServiceOptions(of configuration: inout Configuration) throws {
        // The options that may be given per service (`OptionDescription.perService`), one by one rather than
        // through a collection of pairs (see `configuration()`).
        var names: [String] = []
        let remotes = configuration.remotes
        try collectServiceNames(connectTimeout, option: "--connect-timeout", remotes: remotes, into: &names)
        try collectServiceNames(connectDeadline, option: "--connect-deadline", remotes: remotes, into: &names)
        try collectServiceNames(idleTimeout, option: "--idle-timeout", remotes: remotes, into: &names)
        try collectServiceNames(proxyProtocol, option: "--proxy-protocol", remotes: remotes, into: &names)
        try collectServiceNames(source, option: "--source", remotes: remotes, into: &names)
        try collectServiceNames(allow, option: "--allow", remotes: remotes, into: &names)
        try collectServiceNames(deny, option: "--deny", remotes: remotes, into: &names)
        try collectServiceNames(keepalive, option: "--keepalive", remotes: remotes, into: &names)
        try collectServiceNames(logConnections, option: "--log-connections", remotes: remotes, into: &names)
        try collectServiceNames(splice, option: "--splice", remotes: remotes, into: &names)
        try collectServiceNames(
            maxConnectionsPerClient, option: "--max-connections-per-client", remotes: remotes, into: &names)
        try collectServiceNames(
            maxNewConnectionsPerClient, option: "--max-new-connections-per-client", remotes: remotes, into: &names)
        try collectServiceNames(clientPrefixLength, option: "--client-prefix-length", remotes: remotes, into: &names)
        configuration.relay.service = try serviceOptions(for: nil, over: ServiceOptions())
        for name in names {
            configuration.serviceOptions[name] = try serviceOptions(for: name, over: configuration.relay.service)
        }
        // The value without a name serves the services that have no value of their own: one of them must limit
        // clients, or it changes nothing.
        if let value = values(clientPrefixLength, for: nil).last {
            let used = remotes.contains { remote in
                guard let name = remote.name else { return configuration.relay.service.limitsClients }
                guard values(clientPrefixLength, for: name).isEmpty else { return false }
                return (configuration.serviceOptions[name] ?? configuration.relay.service).limitsClients
            }
            if !used {
                let limited = configuration.serviceOptions.values.contains(where: \.limitsClients)
                throw limited
                    ? OptionError(
                        "--client-prefix-length \(value) has no effect: each service that limits its clients gives "
                            + "its own; name the service it is for, or leave it out")
                    : clientPrefixLengthAlone()
            }
        }
    }

    /// `defaults` with the values given for the service `name` (nil: those without a name) in their place. A
    /// single-valued option keeps its last value; a repeatable one (`--source`, `--allow`, `--deny`) given for a
    /// service replaces the defaults' list with the service's own.
    private func serviceOptions(for name: String?, over defaults: ServiceOptions) throws -> ServiceOptions {
        var options = defaults
        if let value = values(connectTimeout, for: name).last {
            options.connectTimeout = try milliseconds(value, option: "--connect-timeout")
        }
        if let value = values(connectDeadline, for: name).last {
            options.connectDeadline = try milliseconds(value, option: "--connect-deadline")
        }
        if let value = values(idleTimeout, for: name).last {
            options.idleTimeout = try milliseconds(value, option: "--idle-timeout")
        }
        if let value = values(proxyProtocol, for: name).last {
            guard let version = ProxyProtocol(rawValue: value) else {
                throw OptionError("--proxy-protocol '\(value)' is not a version; expected v1 or v2")
            }
            options.proxyProtocol = version
        }
        let sources = try values(source, for: name).map(sourceAddress)
        if sources.count > 2 || (sources.count == 2 && sources[0].family == sources[1].family) {
            throw OptionError("--source is given twice for one family; give at most one IPv4 and one IPv6 address")
        }
        if !sources.isEmpty || name == nil { options.sources = sources }
        let allowed = try values(allow, for: name).map { try range($0, option: "--allow") }
        if !allowed.isEmpty || name == nil { options.access.allow = allowed }
        let denied = try values(deny, for: name).map { try range($0, option: "--deny") }
        if !denied.isEmpty || name == nil { options.access.deny = denied }
        if let value = values(keepalive, for: name).last { options.keepalive = try parseKeepalive(value) }
        if let value = values(logConnections, for: name).last {
            options.logConnections = try yesOrNo(value, option: "--log-connections")
        }
        if let value = values(splice, for: name).last { options.splice = try yesOrNo(value, option: "--splice") }
        if let value = values(maxConnectionsPerClient, for: name).last {
            options.maximumConnectionsPerClient = try count(
                value, option: "--max-connections-per-client", range: 1...10_000_000)
        }
        if let value = values(maxNewConnectionsPerClient, for: name).last {
            options.newConnectionRatePerClient = try connectionRate(value)
        }
        if let value = values(clientPrefixLength, for: name).last {
            // For the unnamed value, checked once every service has its limits (see `setServiceOptions`).
            if name != nil && !options.limitsClients { throw clientPrefixLengthAlone() }
            options.clientPrefixes = try clientPrefixes(value)
        }
        return options
    }
}

private func clientPrefixLengthAlone() -> OptionError {
    OptionError(
        "--client-prefix-length has no effect without --max-connections-per-client or "
            + "--max-new-connections-per-client")
}

/// Adds the service names among `values` to `names`; a name that no `--remote` has is an error.
private func collectServiceNames(
    _ values: [String], option: String, remotes: [NamedEndpoint], into names: inout [String]
) throws {
    for value in values {
        guard let name = serviceName(in: value) else { continue }
        guard remotes.contains(where: { $0.name == name }) else {
            throw OptionError(
                "\(option) \(value): no service is named '\(name)'; give --remote \(name)=ADDRESS:PORT or leave the "
                    + "name out")
        }
        if !names.contains(name) { names.append(name) }
    }
}

/// The service name of a per-service value, `imap` in `imap=v2`; nil for a value without one. A name is what
/// `NamedEndpoint` accepts; no value of these options holds a '='.
private func serviceName(in value: String) -> String? {
    guard let equals = value.utf8.firstIndex(of: UInt8(ascii: "=")) else { return nil }
    return String(value[..<equals])
}

/// The values among `all` given for the service `name` (nil: those without a name), without their name.
private func values(_ all: [String], for name: String?) -> [String] {
    var found: [String] = []
    for value in all {
        let valueName = serviceName(in: value)
        guard valueName == name else { continue }
        found.append(valueName.map { String(value.utf8.dropFirst($0.utf8.count + 1))! } ?? value)
    }
    return found
}

/// `--user`, `--group`: a name or a number, without spaces, control characters or ':'.
private func checkAccountName(_ name: String?, option: String) throws {
    guard let name else { return }
    if name.isEmpty || name.utf8.contains(where: { $0 < 0x21 || $0 == 0x3a }) {
        throw OptionError("\(option) '\(name)' is not a user or group name")
    }
}

/// `yes` or `no`.
private func yesOrNo(_ text: String, option: String) throws -> Bool {
    switch text {
    case "yes": return true
    case "no": return false
    default: throw OptionError("\(option) '\(text)' is not valid; expected yes or no")
    }
}

/// `--loopback-congestion-control`: `system`, or the name of an algorithm (whether the kernel has it is checked
/// at start, by `Launcher`).
private func congestionControl(_ text: String) throws -> CongestionControl? {
    if text == "system" { return nil }
    guard let algorithm = CongestionControl(name: text) else {
        throw OptionError(
            "--loopback-congestion-control '\(text)' is not an algorithm name; expected 'system' or a name such as "
                + "reno or cubic")
    }
    return algorithm
}

/// `--client-prefix-length`: `IPV4,IPV6`, such as `32,64` (the default) or `24,56`.
private func clientPrefixes(_ text: String) throws -> ClientPrefixes {
    let fields = text.split(separator: ",", omittingEmptySubsequences: false)
    guard fields.count == 2,
        fields.allSatisfy({ (1...3).contains($0.utf8.count) && $0.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) }),
        let ipv4 = Int(fields[0]), let ipv6 = Int(fields[1]), let prefixes = ClientPrefixes(ipv4: ipv4, ipv6: ipv6)
    else {
        throw OptionError(
            "--client-prefix-length '\(text)' is not valid; expected IPV4,IPV6 prefix lengths, 1 to 32 and 1 to 128 "
                + "(such as 32,64)")
    }
    return prefixes
}

/// `--max-new-connections-per-client`: `COUNT/SECONDS`, such as `30/60`.
private func connectionRate(_ text: String) throws -> ConnectionRate {
    func bad() -> OptionError {
        OptionError(
            "--max-new-connections-per-client '\(text)' is not valid; expected COUNT/SECONDS, 1 to 1000000 "
                + "connections per 0.001 to 86400 seconds (such as 30/60: 30 at once, then one every 2 seconds)")
    }
    let fields = text.split(separator: "/", omittingEmptySubsequences: false)
    guard fields.count == 2, (1...7).contains(fields[0].utf8.count),
        fields[0].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let count = Int(fields[0]),
        let period = try? milliseconds(String(fields[1]), option: "--max-new-connections-per-client"),
        let rate = ConnectionRate(count: count, period: period)
    else { throw bad() }
    return rate
}

/// `--source`: an IPv4 or IPv6 address, without a port.
private func sourceAddress(_ text: String) throws -> SocketAddress {
    if let address = SocketAddress(numericHost: text) { return address }
    throw OptionError("--source '\(text)' is not an IPv4 or IPv6 address (without a port), such as 192.0.2.10")
}

/// `--allow`, `--deny`: a CIDR block.
private func range(_ text: String, option: String) throws -> AddressRange {
    do {
        return try AddressRange(parsing: text)
    } catch {
        throw OptionError("\(option): \(error)")
    }
}

/// A whole number in `range`.
private func count(_ text: String, option: String, range: ClosedRange<Int>, meaning: String? = nil) throws -> Int {
    guard let value = Int(text), range.contains(value) else {
        throw OptionError(
            "\(option) '\(text)' is out of range; expected \(meaning ?? String(range.lowerBound)) to \(range.upperBound)"
        )
    }
    return value
}

private func endpoint(_ text: String, option: String, portZero: Endpoint.PortZero) throws -> NamedEndpoint {
    do {
        return try NamedEndpoint(parsing: text, portZero: portZero)
    } catch {
        throw OptionError("\(option): \(error)")
    }
}

/// A size in bytes: `65536`, `64k`, `1m`.
private func size(_ text: String, option: String, range: ClosedRange<Int>) throws -> Int {
    var digits = Substring(text)
    var multiplier = 1
    switch digits.last {
    case "k", "K":
        multiplier = 1 << 10
        digits = digits.dropLast()
    case "m", "M":
        multiplier = 1 << 20
        digits = digits.dropLast()
    default:
        break
    }
    guard let value = Int(digits), value > 0, value <= range.upperBound / multiplier,
        range.contains(value * multiplier)
    else {
        throw OptionError(
            "\(option) '\(text)' is not a size from \(range.lowerBound) to \(range.upperBound) bytes (such as 65536, 64k or 1m)"
        )
    }
    return value * multiplier
}

/// Seconds, possibly with a fraction, as milliseconds: `10`, `2.5`.
private func milliseconds(_ text: String, option: String, zero: Bool = false) throws -> Int64 {
    let lowest = zero ? "0" : "0.001"
    guard let seconds = Double(text), seconds.isFinite, zero ? seconds >= 0 : seconds > 0, seconds <= 86_400 else {
        throw OptionError("\(option) '\(text)' is not a number of seconds from \(lowest) to 86400")
    }
    return zero && seconds == 0 ? 0 : max(1, Int64((seconds * 1000).rounded()))
}

/// `off`, `IDLE`, or `IDLE,INTERVAL,COUNT` (whole seconds; the interval defaults to a quarter of the idle time).
private func parseKeepalive(_ text: String) throws -> Keepalive? {
    if text == "off" { return nil }
    func bad() -> OptionError {
        OptionError(
            "--keepalive '\(text)' is not valid; expected 'off', IDLE or IDLE,INTERVAL,COUNT in whole seconds "
                + "(such as 120,30,4)")
    }
    // Read on bytes: this runs at every start, and inetd starts a process per connection.
    var fields: [Int] = []
    var value = 0
    var digits = 0
    for byte in text.utf8 {
        if byte == UInt8(ascii: ",") {
            guard digits > 0 else { throw bad() }
            fields.append(value)
            (value, digits) = (0, 0)
        } else if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") && digits < 6 {
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
            digits += 1
        } else {
            throw bad()
        }
    }
    guard digits > 0 else { throw bad() }
    fields.append(value)
    guard fields.count == 1 || fields.count == 3 else { throw bad() }
    let idle = fields[0]
    let interval = fields.count == 3 ? fields[1] : max(1, idle / 4)
    let count = fields.count == 3 ? fields[2] : 4
    // The kernel's bounds: TCP_KEEPIDLE and TCP_KEEPINTVL 1 to 32767, TCP_KEEPCNT 1 to 127.
    guard (1...32767).contains(idle), (1...32767).contains(interval), (1...127).contains(count) else { throw bad() }
    return Keepalive(idle: idle, interval: interval, count: count)
}
