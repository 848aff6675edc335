/// The command line read without swift-argument-parser, for the common case of a valid line of long options with
/// values (`--remote 127.0.0.1:25`, `--pidfile=/run/x.pid`) and flags. Returns nil for anything else — help,
/// version, an unknown option, a missing value, a value that looks like an option — so that swift-argument-parser
/// reads the line and gives its messages. The names and kinds come from `optionTable`, as the command's do; a test
/// compares them with what swift-argument-parser reports.
public enum QuickCommandLine {
    public static func parse(_ arguments: [String]) -> Options? {
        var options = Options()
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument.utf8.count == 2, argument.utf8.first == UInt8(ascii: "-"),
                let option = OptionDescription.named(short: argument.utf8.last!), option.kind == .flag
            {
                options.set(option.key, "")  // `-f`
                continue
            }
            guard argument.hasPrefix("--") else { return nil }
            var name = Substring(argument.utf8.dropFirst(2))
            var value: String?
            if let equals = name.firstIndex(of: "=") {
                value = String(name[name.index(after: equals)...])
                name = name[..<equals]
                if value!.isEmpty { return nil }
            }
            guard let option = OptionDescription.named(name.utf8) else { return nil }
            if option.kind == .flag {
                guard value == nil else { return nil }
                options.set(option.key, "")
                continue
            }
            if value == nil {
                guard index < arguments.count, !arguments[index].hasPrefix("-") else { return nil }
                value = arguments[index]
                index += 1
            }
            options.set(option.key, value!)
        }
        return options.remote.isEmpty ? nil : options
    }
}

extension Options {
    /// Stores a value or sets a flag (whose `value` is ignored). A repeated option keeps the last value, as
    /// swift-argument-parser does; the repeatable ones (`OptionDescription.Kind.repeatable`) collect them all. Used by
    /// `QuickCommandLine` and by the fuzz target that builds options field by field.
    public mutating func set(_ key: OptionKey, _ value: String) {
        switch key {
        case .local: local.append(value)
        case .remote: remote.append(value)
        case .pidfile: pidfile = value
        case .bufferSize: bufferSize = value
        case .pipeMemory: pipeMemory = value
        case .connectTimeout: connectTimeout.append(value)
        case .connectDeadline: connectDeadline.append(value)
        case .threads: threads = value
        case .exitIdleTime: exitIdleTime = value
        case .maxConnections: maxConnections = value
        case .maxConnectionsPerClient: maxConnectionsPerClient.append(value)
        case .maxNewConnectionsPerClient: maxNewConnectionsPerClient.append(value)
        case .clientPrefixLength: clientPrefixLength.append(value)
        case .idleTimeout: idleTimeout.append(value)
        case .keepalive: keepalive.append(value)
        case .shutdownTimeout: shutdownTimeout = value
        case .user: user = value
        case .group: group = value
        case .proxyProtocol: proxyProtocol.append(value)
        case .source: source.append(value)
        case .allow: allow.append(value)
        case .deny: deny.append(value)
        case .resolveInterval: resolveInterval = value
        case .loopbackCongestionControl: loopbackCongestionControl = value
        case .loopbackMSS: loopbackMSS = value
        case .metrics: metrics = value
        case .logConnections: logConnections.append(value)
        case .splice: splice.append(value)
        case .noProxyWarning: noProxyWarning = true
        case .dualStack: dualStack = true
        case .foreground: foreground = true
        case .debug: debug = true
        }
    }
}
