/// The command line read without swift-argument-parser, for the common case of a valid line of long options with
/// values (`--remote 127.0.0.1:25`, `--pidfile=/run/x.pid`) and flags. Returns nil for anything else — help,
/// version, an unknown option, a missing value, a value that looks like an option — so that swift-argument-parser
/// reads the line and gives its messages. The names here must be the command's: a test compares them with what
/// swift-argument-parser reports.
public enum QuickCommandLine {
    /// Long options that take a value (`--name VALUE` or `--name=VALUE`).
    public static let valueOptions = [
        "local", "remote", "pidfile", "bs", "pipe-memory", "connect-timeout", "connect-deadline", "threads",
        "exit-idle-time", "max-connections", "max-connections-per-client", "max-new-connections-per-client",
        "client-prefix-length", "idle-timeout", "keepalive", "shutdown-timeout", "user", "group", "proxy-protocol",
        "source", "allow", "deny", "resolve-interval", "loopback-congestion-control", "metrics", "log-connections",
    ]
    /// Long flags; `-f` is `--foreground`.
    public static let flags = ["debug", "foreground", "dual-stack", "no-proxy-warning"]

    public static func parse(_ arguments: [String]) -> Options? {
        var options = Options()
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "-f" {
                options.foreground = true
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
            switch name {
            case "debug", "foreground", "dual-stack", "no-proxy-warning":
                guard value == nil else { return nil }
                if name == "debug" { options.debug = true }
                if name == "foreground" { options.foreground = true }
                if name == "dual-stack" { options.dualStack = true }
                if name == "no-proxy-warning" { options.noProxyWarning = true }
                continue
            default:
                break
            }
            if value == nil {
                guard index < arguments.count, !arguments[index].hasPrefix("-") else { return nil }
                value = arguments[index]
                index += 1
            }
            guard set(name, value!, in: &options) else { return nil }
        }
        return options.remote.isEmpty ? nil : options
    }

    /// Stores a value option; false for a name that is not one. A repeated option keeps the last value, as
    /// swift-argument-parser does; the repeatable ones collect them all.
    private static func set(_ name: Substring, _ value: String, in options: inout Options) -> Bool {
        switch name {
        case "local": options.local.append(value)
        case "remote": options.remote.append(value)
        case "pidfile": options.pidfile = value
        case "bs": options.bufferSize = value
        case "pipe-memory": options.pipeMemory = value
        case "connect-timeout": options.connectTimeout = value
        case "connect-deadline": options.connectDeadline = value
        case "threads": options.threads = value
        case "exit-idle-time": options.exitIdleTime = value
        case "max-connections": options.maxConnections = value
        case "max-connections-per-client": options.maxConnectionsPerClient = value
        case "max-new-connections-per-client": options.maxNewConnectionsPerClient = value
        case "client-prefix-length": options.clientPrefixLength = value
        case "idle-timeout": options.idleTimeout = value
        case "keepalive": options.keepalive = value
        case "shutdown-timeout": options.shutdownTimeout = value
        case "user": options.user = value
        case "group": options.group = value
        case "proxy-protocol": options.proxyProtocol = value
        case "source": options.source.append(value)
        case "allow": options.allow.append(value)
        case "deny": options.deny.append(value)
        case "resolve-interval": options.resolveInterval = value
        case "loopback-congestion-control": options.loopbackCongestionControl = value
        case "metrics": options.metrics = value
        case "log-connections": options.logConnections = value
        default: return false
        }
        return true
    }
}
