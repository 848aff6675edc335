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
/// fields, each a selector byte and the value: the selector picks the option (and sets the flags).
public func fuzzOptions(_ data: [UInt8]) {
    // A valid remote, which the first remote field replaces, so that most inputs get past the first check.
    var options = Options(remote: ["127.0.0.1:25"])
    var ownRemote = false
    for field in data.split(separator: 0, omittingEmptySubsequences: false) {
        guard let selector = field.first else { continue }
        let value = String(decoding: field.dropFirst(), as: UTF8.self)
        switch selector % 27 {
        case 0: options.local.append(value)
        case 1:
            options.remote = (ownRemote ? options.remote : []) + [value]
            ownRemote = true
        case 2: options.pidfile = value
        case 3: options.bufferSize = value
        case 4: options.connectTimeout = value
        case 5: options.threads = value
        case 6: options.exitIdleTime = value
        case 7: options.maxConnections = value
        case 8: options.idleTimeout = value
        case 9: options.keepalive = value
        case 10: options.shutdownTimeout = value
        case 11: options.user = value
        case 12: options.group = value
        case 13: options.proxyProtocol = value
        case 14: options.source.append(value)
        case 15: options.allow.append(value)
        case 16: options.deny.append(value)
        case 17: options.resolveInterval = value
        case 18: options.debug.toggle()
        case 19: options.foreground.toggle()
        case 20: options.dualStack.toggle()
        case 21:
            options.remote = []  // no remote at all
            ownRemote = true
        // The per-client limit, or with a '/' the per-client rate.
        case 22 where value.contains("/"): options.maxNewConnectionsPerClient = value
        case 22: options.maxConnectionsPerClient = value
        case 23: options.clientPrefixLength = value
        case 24: options.metrics = value
        case 25: options.logConnections = value
        case 26: options.connectDeadline = value
        default: options.local.append(value)
        }
    }
    checkConfiguration(options, input: data)
}

/// `configuration()` throws only `OptionError`; a configuration it gives has its values in their ranges.
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
    require((0...1024).contains(relay.threads), "threads \(relay.threads)", input: input)
    require((1...86_400_000).contains(relay.connectTimeout), "connect timeout \(relay.connectTimeout)", input: input)
    require((0...86_400_000).contains(relay.shutdownTimeout), "shutdown timeout", input: input)
    require((0...86_400_000).contains(relay.resolveInterval), "resolve interval", input: input)
    require(relay.idleTimeout.map { (1...86_400_000).contains($0) } ?? true, "idle timeout", input: input)
    require(configuration.exitIdleTime.map { (1...86_400_000).contains($0) } ?? true, "exit idle time", input: input)
    require(configuration.maximumConnections.map { (1...10_000_000).contains($0) } ?? true, "max", input: input)
    require(
        relay.maximumConnectionsPerClient.map { (1...10_000_000).contains($0) } ?? true, "max per client", input: input)
    require(
        (1...32).contains(relay.clientPrefixes.ipv4) && (1...128).contains(relay.clientPrefixes.ipv6),
        "client prefix lengths \(relay.clientPrefixes.ipv4),\(relay.clientPrefixes.ipv6)", input: input)
    if let rate = relay.newConnectionRatePerClient {
        require(
            (1...1_000_000).contains(rate.count) && (1...86_400_000).contains(rate.period), "rate \(rate)",
            input: input)
    }
    require(
        options.clientPrefixLength == nil || relay.maximumConnectionsPerClient != nil
            || relay.newConnectionRatePerClient != nil,
        "--client-prefix-length without --max-connections-per-client", input: input)
    if let keepalive = relay.keepalive {
        require(
            (1...32767).contains(keepalive.idle) && (1...32767).contains(keepalive.interval)
                && (1...127).contains(keepalive.count), "keepalive \(keepalive)", input: input)
    }
    require(relay.sources.count <= 2, "more than two sources", input: input)
    require(relay.access.allow.count == options.allow.count, "allow rules", input: input)
    require(relay.access.deny.count == options.deny.count, "deny rules", input: input)
}

/// The options as a canonical command line: every value option that differs from its default, flags last.
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
    for value in options.local { add("local", value) }
    for value in options.remote { add("remote", value) }
    add("pidfile", options.pidfile)
    add("bs", options.bufferSize, default: defaults.bufferSize)
    add("connect-timeout", options.connectTimeout, default: defaults.connectTimeout)
    add("threads", options.threads, default: defaults.threads)
    add("exit-idle-time", options.exitIdleTime)
    add("max-connections", options.maxConnections)
    add("max-connections-per-client", options.maxConnectionsPerClient)
    add("max-new-connections-per-client", options.maxNewConnectionsPerClient)
    add("client-prefix-length", options.clientPrefixLength)
    add("idle-timeout", options.idleTimeout)
    add("keepalive", options.keepalive, default: defaults.keepalive)
    add("shutdown-timeout", options.shutdownTimeout, default: defaults.shutdownTimeout)
    add("user", options.user)
    add("group", options.group)
    add("proxy-protocol", options.proxyProtocol)
    for value in options.source { add("source", value) }
    for value in options.allow { add("allow", value) }
    for value in options.deny { add("deny", value) }
    add("resolve-interval", options.resolveInterval, default: defaults.resolveInterval)
    if options.debug { arguments.append("--debug") }
    if options.foreground { arguments.append("-f") }
    if options.dualStack { arguments.append("--dual-stack") }
    return arguments
}
