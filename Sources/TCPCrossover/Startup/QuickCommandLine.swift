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
                set(option.key, "", in: &options)  // `-f`
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
                set(option.key, "", in: &options)
                continue
            }
            if value == nil {
                guard index < arguments.count, !arguments[index].hasPrefix("-") else { return nil }
                value = arguments[index]
                index += 1
            }
            set(option.key, value!, in: &options)
        }
        return options.remote.isEmpty ? nil : options
    }

    /// Stores a value or sets a flag (whose `value` is ignored). A repeated option keeps the last value, as
    /// swift-argument-parser does; the repeatable ones (`OptionDescription.Kind.repeatable`) collect them all.
    private static func set(_ key: OptionKey, _ value: String, in options: inout Options) {
        switch key {
        case .local: options.local.append(value)
        case .remote: options.remote.append(value)
        case .pidfile: options.pidfile = value
        case .bufferSize: options.bufferSize = value
        case .pipeMemory: options.pipeMemory = value
        case .connectTimeout: options.connectTimeout.append(value)
        case .connectDeadline: options.connectDeadline.append(value)
        case .threads: options.threads = value
        case .exitIdleTime: options.exitIdleTime = value
        case .maxConnections: options.maxConnections = value
        case .maxConnectionsPerClient: options.maxConnectionsPerClient.append(value)
        case .maxNewConnectionsPerClient: options.maxNewConnectionsPerClient.append(value)
        case .clientPrefixLength: options.clientPrefixLength.append(value)
        case .idleTimeout: options.idleTimeout.append(value)
        case .keepalive: options.keepalive.append(value)
        case .shutdownTimeout: options.shutdownTimeout = value
        case .user: options.user = value
        case .group: options.group = value
        case .proxyProtocol: options.proxyProtocol.append(value)
        case .source: options.source.append(value)
        case .allow: options.allow.append(value)
        case .deny: options.deny.append(value)
        case .resolveInterval: options.resolveInterval = value
        case .loopbackCongestionControl: options.loopbackCongestionControl = value
        case .loopbackMSS: options.loopbackMSS = value
        case .metrics: options.metrics = value
        case .logConnections: options.logConnections.append(value)
        case .noProxyWarning: options.noProxyWarning = true
        case .dualStack: options.dualStack = true
        case .foreground: options.foreground = true
        case .debug: options.debug = true
        }
    }
}
