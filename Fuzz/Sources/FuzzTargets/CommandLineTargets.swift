import TCPCrossover

/// The command line: the input split on NUL bytes is the argument list. `QuickCommandLine.parse` must not crash,
/// gives options with a remote or nil, and reads the options it gives back from their canonical spelling to the
/// same options; `configuration()` must not crash and throws nothing but `OptionError`.
public func fuzzCommandLine(_ data: [UInt8]) {
    let arguments = data.split(separator: 0, omittingEmptySubsequences: false).map {
        String(decoding: $0, as: UTF8.self)
    }
    guard let options = QuickCommandLine.parse(arguments) else { return }
    require(!options.remote.isEmpty, "parsed without a remote", input: data)

    let spelled = spelling(options)
    let again = QuickCommandLine.parse(spelled)
    require(
        again == options,
        "\(spelled.map(escaped)) reads as \(String(describing: again)), not \(options)", input: data)

    checkConfiguration(options, input: data)
}

/// `Options` with arbitrary text in its fields, then `configuration()`. The input is a list of NUL-separated
/// fields, each a selector byte and the value: the selector picks the option from `selectedOptions`; a repeatable
/// option collects the values, a flag is toggled.
public func fuzzOptions(_ data: [UInt8]) {
    // A valid remote, which the first remote field replaces, so that most inputs get past the first check.
    var options = Options(remote: ["127.0.0.1:25"])
    var ownRemote = false
    for field in data.split(separator: 0, omittingEmptySubsequences: false) {
        guard let selector = field.first else { continue }
        let value = String(decoding: field.dropFirst(), as: UTF8.self)
        // Modulo 64 first, so that a selector keeps its option when options are added (up to 64 selectors).
        guard let key = selectedOptions[Int(selector) % 64 % selectedOptions.count] else {
            options.remote = []  // no remote at all
            ownRemote = true
            continue
        }
        // The first --remote replaces the default one; a flag given again is unset, so that either value is
        // reachable; everything else as the command line stores it.
        switch key {
        case .remote:
            options.remote = (ownRemote ? options.remote : []) + [value]
            ownRemote = true
        case .noProxyWarning: options.noProxyWarning.toggle()
        case .dualStack: options.dualStack.toggle()
        case .foreground: options.foreground.toggle()
        case .debug: options.debug.toggle()
        default: options.set(key, value)
        }
    }
    checkConfiguration(options, input: data)
}

/// The option that each selector of `fuzzOptions` sets; nil removes every remote. A new option takes the next
/// selector, so that the committed seeds (Fuzz/corpus/options, whose selector bytes are '@' + index, 64 + index)
/// keep their meaning.
private let selectedOptions: [OptionKey?] = {
    let keys: [OptionKey?] = [
        .local, .remote, .pidfile, .bufferSize, .connectTimeout, .threads, .exitIdleTime, .maxConnections,
        .idleTimeout, .keepalive, .shutdownTimeout, .user, .group, .proxyProtocol, .source, .allow, .deny,
        .resolveInterval, .debug, .foreground, .dualStack, nil, .maxConnectionsPerClient, .clientPrefixLength,
        .metrics, .logConnections, .connectDeadline, .maxNewConnectionsPerClient, .pipeMemory,
        .loopbackCongestionControl, .loopbackMSS, .noProxyWarning, .splice,
    ]
    let missing = OptionKey.allCases.filter { key in !keys.contains(key) }
    if !missing.isEmpty || keys.count != OptionKey.allCases.count + 1 || keys.count > 64 {
        fatalError("selectedOptions must hold every option once in at most 64 selectors; missing: \(missing)")
    }
    return keys
}()

/// `configuration()` throws only `OptionError`; a configuration it gives has its values in their ranges, and each
/// service's options are its own values or, where it has none, the unnamed ones.
private func checkConfiguration(_ options: Options, input: [UInt8]) {
    let configuration: Configuration
    do {
        configuration = try options.configuration()
    } catch let error as OptionError {
        require(!error.description.isEmpty, "empty OptionError", input: input)
        return
    } catch {
        require(false, "configuration() threw \(type(of: error)): \(error)", input: input)
        return
    }
    let relay = configuration.relay
    require(configuration.remotes.count == options.remote.count, "remotes", input: input)
    require(configuration.locals.count == options.local.count, "locals", input: input)
    require(configuration.remotes.allSatisfy { $0.endpoint.port != 0 }, "remote with port 0", input: input)
    require((4096...(16 << 20)).contains(relay.pipeSize), "pipe size \(relay.pipeSize)", input: input)
    require(
        (relay.pipeMemory == nil) == (options.pipeMemory == nil)
            && relay.pipeMemory.map { $0 == 0 || (4096...(1 << 40)).contains($0) } ?? true,
        "pipe memory \(String(describing: relay.pipeMemory))", input: input)
    require((0...1024).contains(relay.threads), "threads \(relay.threads)", input: input)
    require((0...86_400_000).contains(relay.shutdownTimeout), "shutdown timeout", input: input)
    require((0...86_400_000).contains(relay.resolveInterval), "resolve interval", input: input)
    require(configuration.exitIdleTime.map { (1...86_400_000).contains($0) } ?? true, "exit idle time", input: input)
    require(configuration.maximumConnections.map { (1...10_000_000).contains($0) } ?? true, "max", input: input)
    switch relay.loopbackMSS {
    case .system: require(options.loopbackMSS == "system", "loopback MSS system", input: input)
    case .fixed(let bytes): require((536...65495).contains(bytes), "loopback MSS \(bytes)", input: input)
    case .adaptive:
        require(
            options.loopbackMSS == "auto" && relay.loopbackMSS == .standard, "loopback MSS \(relay.loopbackMSS)",
            input: input)
    }
    // 'system' leaves the sockets the system's algorithm; any other text is an algorithm's name.
    let congestionControl = options.loopbackCongestionControl == "system" ? nil : options.loopbackCongestionControl
    require(
        relay.loopbackCongestionControl?.name == congestionControl,
        "loopback congestion control \(String(describing: relay.loopbackCongestionControl))", input: input)
    require(configuration.localRemoteWarning == !options.noProxyWarning, "proxy warning", input: input)
    require((configuration.metrics == nil) == (options.metrics == nil), "metrics", input: input)
    require(configuration.pidfile == options.pidfile && configuration.pidfile != "", "pidfile", input: input)
    require(
        configuration.user == options.user && configuration.group == options.group, "user and group", input: input)
    // A user or group name: not empty, no spaces, control characters or ':'.
    for account in [configuration.user, configuration.group] {
        let valid = account.map { name in !name.isEmpty && name.utf8.allSatisfy { $0 > 0x20 && $0 != 0x3a } }
        require(valid ?? true, "account name \(String(describing: account))", input: input)
    }

    // The options given per service: the unnamed values over the built-in defaults, and each named service's own
    // values over the unnamed ones. A service has options of its own exactly when some value names it.
    checkService(relay.service, name: nil, over: ServiceOptions(), options, input: input)
    var names: Set<String> = []
    for key in OptionKey.allCases {
        let given = perServiceValues(of: key, in: options)
        require((given != nil) == key.option.perService, "per service: --\(key.option.name)", input: input)
        for value in given ?? [] { if let name = serviceName(in: value) { names.insert(name) } }
    }
    require(
        Set(configuration.serviceOptions.keys) == names,
        "options for services \(configuration.serviceOptions.keys.sorted()), named \(names.sorted())", input: input)
    for (name, service) in configuration.serviceOptions {
        require(configuration.remotes.contains { $0.name == name }, "options for \(name), no remote", input: input)
        checkService(service, name: name, over: relay.service, options, input: input)
    }

    // A --client-prefix-length for a service is refused unless that service limits clients; one without a name,
    // unless some service that has no value of its own limits clients (a remote without a name, or a named one
    // without a --client-prefix-length of its own): the per-service form of "refused without
    // --max-connections-per-client or --max-new-connections-per-client".
    for value in options.clientPrefixLength {
        if let name = serviceName(in: value) {
            require(
                configuration.serviceOptions[name]?.limitsClients == true,
                "--client-prefix-length \(value) without a per-client limit for \(name)", input: input)
        } else {
            let used = configuration.remotes.contains { remote in
                guard let name = remote.name else { return relay.service.limitsClients }
                guard values(options.clientPrefixLength, for: name).isEmpty else { return false }
                return (configuration.serviceOptions[name] ?? relay.service).limitsClients
            }
            require(used, "--client-prefix-length \(value) used by no service that limits clients", input: input)
        }
    }
}

/// The options of one service (`name`, nil for the unnamed values) are in their ranges, and each is the service's
/// own value when it has one and the one of `defaults` otherwise; a repeatable option's list (`--source`, `--allow`,
/// `--deny`) holds one entry per value given.
private func checkService(
    _ service: ServiceOptions, name: String?, over defaults: ServiceOptions, _ options: Options, input: [UInt8]
) {
    let label = name ?? "(unnamed)"
    func inherits<Value: Equatable>(_ field: KeyPath<ServiceOptions, Value>, unless given: [String], _ what: String) {
        guard values(given, for: name).isEmpty else { return }
        require(service[keyPath: field] == defaults[keyPath: field], "\(label): \(what) not inherited", input: input)
    }
    inherits(\.connectTimeout, unless: options.connectTimeout, "--connect-timeout")
    inherits(\.connectDeadline, unless: options.connectDeadline, "--connect-deadline")
    inherits(\.idleTimeout, unless: options.idleTimeout, "--idle-timeout")
    inherits(\.proxyProtocol, unless: options.proxyProtocol, "--proxy-protocol")
    inherits(\.sources, unless: options.source, "--source")
    inherits(\.access.allow, unless: options.allow, "--allow")
    inherits(\.access.deny, unless: options.deny, "--deny")
    inherits(\.keepalive, unless: options.keepalive, "--keepalive")
    inherits(\.logConnections, unless: options.logConnections, "--log-connections")
    inherits(\.splice, unless: options.splice, "--splice")
    inherits(\.maximumConnectionsPerClient, unless: options.maxConnectionsPerClient, "--max-connections-per-client")
    inherits(
        \.newConnectionRatePerClient, unless: options.maxNewConnectionsPerClient, "--max-new-connections-per-client")
    inherits(\.clientPrefixes, unless: options.clientPrefixLength, "--client-prefix-length")

    // The last value given for the service counts.
    if let last = values(options.proxyProtocol, for: name).last {
        require(service.proxyProtocol?.rawValue == last, "\(label): --proxy-protocol \(last)", input: input)
    }
    if let last = values(options.keepalive, for: name).last {
        require((service.keepalive == nil) == (last == "off"), "\(label): --keepalive \(last)", input: input)
    }
    if let last = values(options.logConnections, for: name).last {
        require(service.logConnections == (last == "yes"), "\(label): --log-connections \(last)", input: input)
    }
    if let last = values(options.splice, for: name).last {
        require(service.splice == (last == "yes"), "\(label): --splice \(last)", input: input)
    }
    for (entries, given, option) in [
        (service.sources.count, options.source, "--source"), (service.access.allow.count, options.allow, "--allow"),
        (service.access.deny.count, options.deny, "--deny"),
    ] {
        let own = values(given, for: name).count
        require(own == 0 || entries == own, "\(label): \(entries) \(option) entries for \(own) given", input: input)
    }

    require((1...86_400_000).contains(service.connectTimeout), "\(label): connect timeout", input: input)
    require((1...86_400_000).contains(service.connectDeadline), "\(label): connect deadline", input: input)
    require(service.idleTimeout.map { (1...86_400_000).contains($0) } ?? true, "\(label): idle timeout", input: input)
    require(
        service.maximumConnectionsPerClient.map { (1...10_000_000).contains($0) } ?? true,
        "\(label): max per client", input: input)
    require(
        (1...32).contains(service.clientPrefixes.ipv4) && (1...128).contains(service.clientPrefixes.ipv6),
        "\(label): client prefix lengths \(service.clientPrefixes.ipv4),\(service.clientPrefixes.ipv6)", input: input)
    if let rate = service.newConnectionRatePerClient {
        require(
            (1...1_000_000).contains(rate.count) && (1...86_400_000).contains(rate.period), "\(label): rate \(rate)",
            input: input)
    }
    if let keepalive = service.keepalive {
        require(
            (1...32767).contains(keepalive.idle) && (1...32767).contains(keepalive.interval)
                && (1...127).contains(keepalive.count), "\(label): keepalive \(keepalive)", input: input)
    }
    // At most one source address per family.
    require(
        service.sources.count <= 2
            && (service.sources.count < 2 || service.sources[0].family != service.sources[1].family),
        "\(label): sources \(service.sources)", input: input)
}

/// The values of an option that may be given per service (`OptionDescription.perService`), as typed
/// (`[NAME=]VALUE`); nil for the other options.
private func perServiceValues(of key: OptionKey, in options: Options) -> [String]? {
    switch key {
    case .connectTimeout: options.connectTimeout
    case .connectDeadline: options.connectDeadline
    case .maxConnectionsPerClient: options.maxConnectionsPerClient
    case .maxNewConnectionsPerClient: options.maxNewConnectionsPerClient
    case .clientPrefixLength: options.clientPrefixLength
    case .idleTimeout: options.idleTimeout
    case .keepalive: options.keepalive
    case .proxyProtocol: options.proxyProtocol
    case .source: options.source
    case .allow: options.allow
    case .deny: options.deny
    case .logConnections: options.logConnections
    case .splice: options.splice
    case .local, .remote, .pidfile, .bufferSize, .pipeMemory, .threads, .exitIdleTime, .maxConnections,
        .shutdownTimeout, .user, .group, .resolveInterval, .loopbackCongestionControl, .loopbackMSS, .noProxyWarning,
        .metrics, .dualStack, .foreground, .debug:
        nil
    }
}

/// The service a per-service value names, `imap` in `imap=v2` (the bytes before the first '='), and the value
/// without it; a nil name for a value without one. Written here rather than taken from the library, so that the
/// target checks the library's reading.
private func nameAndValue(_ text: String) -> (name: String?, value: String) {
    guard let equals = text.utf8.firstIndex(of: UInt8(ascii: "=")) else { return (nil, text) }
    return (String(text.utf8[..<equals])!, String(text.utf8[text.utf8.index(after: equals)...])!)
}

private func serviceName(in text: String) -> String? { nameAndValue(text).name }

/// The values among `all` given for the service `name` (nil: those without a name), without their name.
private func values(_ all: [String], for name: String?) -> [String] {
    all.compactMap { text in
        let (valueName, value) = nameAndValue(text)
        return valueName == name ? value : nil
    }
}

/// The options as a canonical command line: every value option that differs from its default, a repeatable one
/// once per value, and the flags that are set. One case per option, so that a new one cannot be left out.
private func spelling(_ options: Options) -> [String] {
    let defaults = Options.defaults
    var arguments: [String] = []
    func add(_ name: String, _ value: String?, default defaultValue: String? = nil) {
        guard let value, value != defaultValue else { return }
        // A value that looks like an option must be attached with '='.
        if value.hasPrefix("-") {
            arguments.append("--\(name)=\(value)")
        } else {
            arguments += ["--\(name)", value]
        }
    }
    func add(_ name: String, every values: [String]) {
        for value in values { add(name, value) }
    }
    func add(_ flag: String, if isSet: Bool) {
        if isSet { arguments.append(flag) }
    }
    for key in OptionKey.allCases {
        switch key {
        case .local: add("local", every: options.local)
        case .remote: add("remote", every: options.remote)
        case .pidfile: add("pidfile", options.pidfile)
        case .bufferSize: add("bs", options.bufferSize, default: defaults.bufferSize)
        case .pipeMemory: add("pipe-memory", options.pipeMemory)
        case .connectTimeout: add("connect-timeout", every: options.connectTimeout)
        case .connectDeadline: add("connect-deadline", every: options.connectDeadline)
        case .threads: add("threads", options.threads, default: defaults.threads)
        case .exitIdleTime: add("exit-idle-time", options.exitIdleTime)
        case .maxConnections: add("max-connections", options.maxConnections)
        case .maxConnectionsPerClient: add("max-connections-per-client", every: options.maxConnectionsPerClient)
        case .maxNewConnectionsPerClient:
            add("max-new-connections-per-client", every: options.maxNewConnectionsPerClient)
        case .clientPrefixLength: add("client-prefix-length", every: options.clientPrefixLength)
        case .idleTimeout: add("idle-timeout", every: options.idleTimeout)
        case .keepalive: add("keepalive", every: options.keepalive)
        case .shutdownTimeout: add("shutdown-timeout", options.shutdownTimeout, default: defaults.shutdownTimeout)
        case .user: add("user", options.user)
        case .group: add("group", options.group)
        case .proxyProtocol: add("proxy-protocol", every: options.proxyProtocol)
        case .source: add("source", every: options.source)
        case .allow: add("allow", every: options.allow)
        case .deny: add("deny", every: options.deny)
        case .resolveInterval: add("resolve-interval", options.resolveInterval, default: defaults.resolveInterval)
        case .loopbackCongestionControl:
            add(
                "loopback-congestion-control", options.loopbackCongestionControl,
                default: defaults.loopbackCongestionControl)
        case .loopbackMSS: add("loopback-mss", options.loopbackMSS, default: defaults.loopbackMSS)
        case .metrics: add("metrics", options.metrics)
        case .logConnections: add("log-connections", every: options.logConnections)
        case .splice: add("splice", every: options.splice)
        case .noProxyWarning: add("--no-proxy-warning", if: options.noProxyWarning)
        case .dualStack: add("--dual-stack", if: options.dualStack)
        case .foreground: add("-f", if: options.foreground)
        case .debug: add("--debug", if: options.debug)
        }
    }
    return arguments
}
