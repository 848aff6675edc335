/// The options, each once: their names, whether they take a value and repeat, their help line and their manual
/// text. `QuickCommandLine` reads its names and kinds from here; the argument-parser command takes its names and
/// help from here (a test checks that its property wrappers agree with the kinds); the README's options table and
/// the man page's OPTIONS section are rendered from here (`make docs`; a test checks that the committed ones are
/// what the table renders).
///
/// A new option is one entry here, one case of `OptionKey`, its field in `Options` and its line in
/// `Options.configuration()`; the compiler then asks for its line in `QuickCommandLine` and the tests for its
/// behaviour case.
///
/// Constants only: finding an option by name at start reads no array and builds nothing (inetd starts a process
/// per connection).
extension OptionKey {
    /// This option's entry of the table.
    public var option: OptionDescription {
        // A switch rather than an array: a global array of these is built at run time (its storage's generic
        // metadata alone cost 12,700 instructions per start, by callgrind), and each case here is constants.
        switch self {
        case .local:
            entry(
                "local", .repeatable, valueName: "[name=]address:port",
                help: """
                    Address to listen on; repeatable. IPv6 addresses accept IPv6 only unless --dual-stack. A name \
                    before '=' ties it to the --remote of that name.
                    """,
                manual: """
                    Listen here; repeatable. Port 0 lets the kernel pick one (the start line says which). A name ties \
                    the listener to the `--remote` of that name.
                    """)
        case .remote:
            entry(
                "remote", .repeatable, valueName: "[name=]address:port",
                help: """
                    Address to relay connections to; repeat for failover, in order. A name before '=' serves the \
                    --local (or systemd socket, FileDescriptorName=) of that name; an unnamed one serves the rest.
                    """,
                manual: """
                    Relay connections here. Repeat it for failover: remotes are tried in order, and a host name stands \
                    for all its addresses (docs/OPERATIONS.md: Connecting to the remote). Among the addresses of \
                    one host name the \
                    families take turns, and when one has not answered after 250 ms the next is tried alongside (Happy \
                    Eyeballs, RFC 8305); the next remote only once all of them have failed. An address that failed \
                    (refused, unreachable, timed out) is tried last for 30 seconds. A named remote serves the \
                    `--local` of that name, or the socket systemd passes with that `FileDescriptorName=`; unnamed \
                    remotes serve the rest.
                    """)
        case .pidfile:
            entry(
                "pidfile", .value, valueName: "file",
                help: "Record the pid in this file, locked while running.",
                manual: """
                    Write the daemon's pid here (`--pidfile FILE` or `--pidfile=FILE`); the file is locked (flock) \
                    while it runs, so a second instance fails at once with `already running (pid N)`; a stale, \
                    unlocked file is taken over; removed on exit. A symbolic link, a FIFO or another non-regular file, \
                    or a file with other names (hard links) at that path is refused (status 73): it is opened as root, \
                    never through a link.
                    """)
        case .bufferSize:
            entry(
                "bs", .value, valueName: "bytes",
                help: """
                    Largest pipe per direction of a connection, 4096 to 16777216; k and m suffixes accepted. A pipe \
                    starts at 64 KiB (16 KiB once --pipe-memory is spent) and grows while the connection's data flows.
                    """,
                manual: """
                    Largest pipe per direction of a connection while it carries bulk data, 4096 to 16777216 (`64k`, \
                    `1m`); default 1 MiB. A pipe starts at 64 KiB, of which all beyond 16 KiB comes from \
                    `--pipe-memory`, and grows towards this only while the pipe, not the reader, holds the data back \
                    (docs/OPERATIONS.md: Clients that stop reading). The kernel may grant less \
                    (`/proc/sys/fs/pipe-max-size`).
                    """)
        case .pipeMemory:
            entry(
                "pipe-memory", .value, valueName: "bytes",
                help: """
                    Pipe memory all connections together may hold beyond 16 KiB a pipe; 0 keeps every pipe at 16 \
                    KiB. Default: 64 times --bs, unprivileged at most half of fs.pipe-user-pages-soft.
                    """,
                manual: """
                    Pipe memory that all connections together may hold beyond 16 KiB a pipe (`64m`; `0` keeps every \
                    pipe at 16 KiB): a pipe's start from 16 to 64 KiB, and its growth. Default: 64 times `--bs`, and \
                    for a relay that runs unprivileged at most half of `fs.pipe-user-pages-soft` (32 MiB of its 64 MiB \
                    by default), so that pipes of 16 KiB are always there for new connections.
                    """)
        case .splice:
            entry(
                "splice", .repeatable, perService: true, valueName: "[name=]yes|no",
                help: """
                    Move bulk data with splice(2), without copying it (default); 'no' copies everything, for a \
                    server on this machine that writes large responses from its own memory and is short of CPU.
                    """,
                manual: """
                    Bulk data (a receive of 32 KiB or more, or a reader that falls behind) moves through a pipe with \
                    splice(2), without passing through the relay's memory: the least CPU for the machine, and by far \
                    the fastest from a server that sends files (sendfile). `no` copies every byte through the relay \
                    (recv(2) and send(2)), as HAProxy does by default. Splicing hands the server's own socket pages \
                    on to the client, so a server on this machine that writes large responses from its memory cannot \
                    reuse them until the client has read them, and writes each response into fresh memory: where such \
                    a server is the bottleneck and serves many connections at once, `no` can give it back a few per \
                    cent of its rate. It costs the relay about twice its CPU per byte, one connection at a time a \
                    fifth of its rate, and responses from files a third (Benchmarks/README.md: The chart). Clients \
                    that stop reading are held to the same bounds either way. Default `yes`.
                    """)
        case .connectTimeout:
            entry(
                "connect-timeout", .repeatable, perService: true, valueName: "[name=]seconds",
                help: "Time allowed for each connect to a remote address.",
                manual: "Time allowed for each connect to a remote address, fractions allowed; default 10.")
        case .connectDeadline:
            entry(
                "connect-deadline", .repeatable, perService: true, valueName: "[name=]seconds",
                help: "Time allowed to reach a remote, all addresses and failover included.",
                manual: """
                    Time allowed to reach a remote, every address and failover included; then the client is reset. \
                    Fractions allowed; default 30.
                    """)
        case .threads:
            entry(
                "threads", .value, valueName: "count",
                help: "Event loop threads; 0 means one per CPU.",
                manual: """
                    Event loops, one thread each; default 0, one per CPU. They share the listeners; a loop that has \
                    accepted clearly more connections than another hands new ones over, so that long-lived connections \
                    are spread evenly.
                    """)
        case .exitIdleTime:
            entry(
                "exit-idle-time", .value, valueName: "seconds",
                help: "Exit after this long without a connection (socket activation starts it again).",
                manual: "Exit after that long without a connection (socket activation starts it again on the next one)."
            )
        case .maxConnections:
            entry(
                "max-connections", .value, valueName: "count",
                help:
                    "Connections relayed at once; more wait in the listen backlog. Default: from the descriptor limit.",
                manual: """
                    Connections relayed at once. At the limit accepting pauses: new clients wait in the listen backlog \
                    and are served as connections end. Default: a third of the descriptor limit (raised to its hard \
                    limit at start), less what the event loops need.
                    """)
        case .maxConnectionsPerClient:
            entry(
                "max-connections-per-client", .repeatable, perService: true, valueName: "[name=]count",
                help: """
                    Connections one client (an address block, see --client-prefix-length) may have open at once; more \
                    are reset before any connection to the remote. Default: no such limit.
                    """,
                manual: """
                    Connections one client may have open at once; its next ones are reset before any connection to the \
                    remote is made, as `--deny` does. A client is an address block (`--client-prefix-length`): one \
                    IPv4 address or one IPv6 /64 by default. IPv4 clients of a dual-stack listener (`::ffff:a.b.c.d`) \
                    count as IPv4; link-local clients count per interface. A block at its limit is logged when its \
                    refusals start and, with their number, when they are over (no refusal for 10 seconds); the line of \
                    each refused connection only with `--debug`. Default: no per-client limit (docs/OPERATIONS.md: \
                    Signals, limits \
                    and privileges, for why, and what the shipped units set).
                    """)
        case .maxNewConnectionsPerClient:
            entry(
                "max-new-connections-per-client", .repeatable, perService: true, valueName: "[name=]count/seconds",
                help: """
                    New connections one client may open: COUNT at once, then COUNT per SECONDS (a token bucket); more \
                    are reset before any connection to the remote. Default: no such limit.
                    """,
                manual: """
                    New connections one client may open: COUNT at once, then COUNT per SECONDS (a token bucket: \
                    `30/60` lets 30 through at once, then one every 2 seconds); its next ones are reset before any \
                    connection to the remote is made, and logged as above. Clients as for \
                    `--max-connections-per-client`. Default: no such limit.
                    """)
        case .clientPrefixLength:
            entry(
                "client-prefix-length", .repeatable, perService: true, valueName: "[name=]ipv4,ipv6",
                help: """
                    The address block that counts as one client for the per-client limits: IPv4 and IPv6 prefix \
                    lengths (default 32,64). IPv4 clients of a dual-stack listener count as IPv4.
                    """,
                manual: """
                    The prefix lengths that make one client for `--max-connections-per-client` and \
                    `--max-new-connections-per-client`, 1 to 32 and 1 to 128; default `32,64`; `24,56` counts each \
                    IPv4 /24 and each IPv6 /56 as one client. (Named for what its numbers are: "block" would read as \
                    the verb.) Refused without one of those two options.
                    """)
        case .idleTimeout:
            entry(
                "idle-timeout", .repeatable, perService: true, valueName: "[name=]seconds",
                help: "Close a connection after this long with no bytes either way (default: never).",
                manual: "Reset a connection that carried no byte either way for that long. Default: never.")
        case .keepalive:
            entry(
                "keepalive", .repeatable, perService: true, valueName: "[name=]idle[,interval,count]",
                help: """
                    TCP keepalive on both sockets: idle seconds before probes, seconds between them, probes before the \
                    connection is dropped; or 'off'.
                    """,
                manual: """
                    TCP keepalive on both sockets of every connection, so that a vanished peer does not hold a \
                    connection forever: probes after IDLE seconds of silence, every INTERVAL seconds, COUNT of them. \
                    `off` turns it off. Default `120,30,4` (a dead peer is noticed after 4 minutes). Keepalive towards \
                    the server stops once the server has ended its stream: its probes could only draw a reset from a \
                    server machine that has forgotten the finished connection. The client's socket keeps it: it \
                    notices a client that vanished while it is still owed bytes or waited for.
                    """)
        case .shutdownTimeout:
            entry(
                "shutdown-timeout", .value, valueName: "seconds",
                help: "On SIGTERM, time open connections get to finish.",
                manual: "On SIGTERM, how long open connections may go on. Default 10.")
        case .user:
            entry(
                "user", .value, valueName: "name",
                help: "Run as this user once the sockets are bound (its groups too).",
                manual: """
                    Once the listening sockets are bound (ports below 1024 need root), run as this user and its \
                    supplementary groups. Neither root nor root's group can be regained afterwards; tcp-crossover \
                    checks, for every drop. With `--pidfile`, a parent process keeps root only to remove the pidfile \
                    when the relay exits.
                    """)
        case .group:
            entry(
                "group", .value, valueName: "name",
                help: "Run with this group once the sockets are bound (default: the user's).",
                manual: """
                    Once the listening sockets are bound, run with this group (the user's own without `--group`). \
                    Started as root, `--group` without `--user` is refused (status 64): the relay would still be root, \
                    which can take any group back.
                    """)
        case .proxyProtocol:
            entry(
                "proxy-protocol", .repeatable, perService: true, valueName: "[name=]version",
                help: "Send the remote a PROXY protocol header (v1 text, v2 binary) with the client's address first.",
                manual: """
                    Send the remote a PROXY protocol header (`v1` text, `v2` binary) with the client's and the local \
                    address, before anything else: the backend sees the real client address. See Security for the \
                    backend side.
                    """)
        case .source:
            entry(
                "source", .repeatable, perService: true, valueName: "[name=]address",
                help: "Connect to the remote from this address; one IPv4 and one IPv6 address at most.",
                manual: """
                    Connect to the remote from this address (at most one IPv4 and one IPv6 address). Only remote \
                    addresses of a family that has a `--source` are used, at start and after every new lookup, so that \
                    no connection leaves from an address the kernel picks.
                    """)
        case .allow:
            entry(
                "allow", .repeatable, perService: true, valueName: "[name=]address/prefix",
                help: "Serve only clients in this block; repeatable.",
                manual: """
                    Serve only clients in the allowed blocks; repeatable; IPv4 clients of a dual-stack listener are \
                    matched as IPv4. A refused client is reset before any connection to the remote is made, and \
                    logged.
                    """)
        case .deny:
            entry(
                "deny", .repeatable, perService: true, valueName: "[name=]address/prefix",
                help: "Refuse clients in this block; repeatable; wins over --allow.",
                manual: """
                    Never serve clients in this block; repeatable; wins over `--allow`. Matched and refused as for \
                    `--allow`.
                    """)
        case .resolveInterval:
            entry(
                "resolve-interval", .value, valueName: "seconds",
                help: "Look remote host names up again this often; 0 never.",
                manual: """
                    Look host names among the remotes up again this often, off the event loops; 0 never; default 60. \
                    Each remote takes its new addresses (those `--source` allows); a remote whose lookup fails, or \
                    finds no address `--source` allows, keeps its last addresses and its place in the order, and the \
                    log says so once.
                    """)
        case .loopbackCongestionControl:
            entry(
                "loopback-congestion-control", .value, valueName: "algorithm",
                help: """
                    Congestion control of the sockets to peers on this machine (loopback or its own address): a kernel \
                    algorithm, or 'system' for the system's default.
                    """,
                manual: """
                    The congestion control of the sockets whose peer is on this machine: `reno` (the default), another \
                    algorithm the kernel has (`/proc/sys/net/ipv4/tcp_available_congestion_control`; as the `--user`, \
                    one of `tcp_allowed_congestion_control`), or `system` to leave them the system's. A name the \
                    kernel does not have, or does not allow, stops the start with status 64.
                    """)
        case .loopbackMSS:
            entry(
                "loopback-mss", .value, valueName: "bytes",
                help: """
                    Largest segment a server on this machine may send the relay: 'auto' (the default: the loopback \
                    interface's for as many connections as TCP memory has room for, 4096 for the rest), 536 to 65495 \
                    always, or 'system'.
                    """,
                manual: """
                    The largest segment (TCP_MAXSEG, announced when connecting) that a server on this machine (a \
                    loopback address, or the machine's own, once seen) may send the relay. A server's send buffer \
                    grows with its segment size, up to 4 MiB at the loopback interface's (some 64 KiB): writing to \
                    500 clients that stopped reading, a server on this machine held 1.55 GiB at 64 KiB and 0.84 GiB at \
                    4096, and past the kernel's TCP memory pressure threshold (the middle number of `tcp_mem`) every \
                    connection on the machine slows down (docs/OPERATIONS.md: Clients that stop reading). `auto`, \
                    the default: the interface's segments for as many open connections as fit, at 4 MiB each, \
                    between the TCP memory the machine holds (`/proc/net/sockstat`, read at most once a second) and \
                    a quarter of the pressure threshold, 4096 for the connections beyond them; a line is logged when \
                    connections start to get 4096, and when they stop. A number, 536 to 65495: that size always. \
                    `system`: the interface's always, which gives every bulk download from such a server some 20 % \
                    more rate and a new connection that fetches 1 MiB a third more, at the risk above.
                    """)
        case .noProxyWarning:
            entry(
                "no-proxy-warning", .flag, valueName: "",
                help: "No warning at start when relaying to an address of this machine without --proxy-protocol.",
                manual: """
                    No warning at start about a remote on this machine without `--proxy-protocol` (see Security): for \
                    those who chose it knowingly.
                    """)
        case .metrics:
            entry(
                "metrics", .value, valueName: "address:port",
                help: """
                    Serve Prometheus metrics at http://ADDRESS:PORT/metrics (never on a relayed port). Under systemd, \
                    a passed socket with FileDescriptorName=metrics does the same.
                    """,
                manual: """
                    Serve Prometheus metrics at `http://ADDRESS:PORT/metrics` (docs/OPERATIONS.md: Metrics), from a \
                    thread of its \
                    own. Off by default; never on a relayed port. Under systemd, a passed socket with \
                    `FileDescriptorName=metrics` does the same and is never relayed. Refused (status 64) where a \
                    process serves one connection (inetd, `Accept=yes`).
                    """)
        case .logConnections:
            entry(
                "log-connections", .repeatable, perService: true, valueName: "[name=]yes|no",
                help: """
                    Log a line for every finished connection ('no' for very busy relays; the figures are counted \
                    either way).
                    """,
                manual: """
                    A log line for every finished connection (see docs/OPERATIONS.md: Logs); `no` for very busy \
                    relays: the figures \
                    (SIGUSR1, `STATUS=`, metrics) are counted either way. Default `yes`.
                    """)
        case .dualStack:
            entry(
                "dual-stack", .flag, valueName: "",
                help: "IPv6 listeners also accept IPv4 clients (as IPv4-mapped addresses).",
                manual: "IPv6 listeners also accept IPv4 clients (seen as `::ffff:a.b.c.d`). Off by default.")
        case .foreground:
            entry(
                "foreground", short: "f", .flag, valueName: "",
                help: "Stay in the foreground and log to standard error.",
                manual: "Stay in the foreground, log to standard error.")
        case .debug:
            entry(
                "debug", .flag, valueName: "",
                help: "Stay in the foreground and log every event to standard error.",
                manual: "Foreground, with a log line per event.")
        }
    }

    private func entry(
        _ name: StaticString, short: StaticString = "", _ kind: OptionDescription.Kind, perService: Bool = false,
        valueName: StaticString, help: StaticString, manual: StaticString
    ) -> OptionDescription {
        OptionDescription(
            key: self, name: name, shortName: short, kind: kind, perService: perService, valueName: valueName,
            help: help, manual: manual)
    }
}

/// Every option, in the order of the help and the documents (not used at start: built when called).
public var optionTable: [OptionDescription] { OptionKey.allCases.map(\.option) }

/// Which option an entry of `optionTable` is: what `QuickCommandLine` switches on to store a value in `Options`.
public enum OptionKey: UInt8, CaseIterable, Sendable {
    case local, remote, pidfile, bufferSize, pipeMemory, splice, connectTimeout, connectDeadline, threads
    case exitIdleTime
    case maxConnections, maxConnectionsPerClient, maxNewConnectionsPerClient, clientPrefixLength, idleTimeout
    case keepalive, shutdownTimeout, user, group, proxyProtocol, source, allow, deny, resolveInterval
    case loopbackCongestionControl, loopbackMSS, noProxyWarning, metrics, logConnections, dualStack, foreground
    case debug
}

/// One option of the command line, as `optionTable` lists it.
public struct OptionDescription: Sendable {
    /// Whether an option takes a value, and whether it may be given more than once.
    public enum Kind: Sendable {
        /// `--name VALUE` or `--name=VALUE`; given twice, the last one counts.
        case value
        /// `--name VALUE`, collected every time it is given.
        case repeatable
        /// `--name` alone.
        case flag
    }

    public let key: OptionKey
    /// The long name, without `--`.
    public let name: StaticString
    /// The one-letter name, without `-`, or empty.
    public let shortName: StaticString
    public let kind: Kind
    /// The option may be given per service, `--proxy-protocol imap=v2`: a value with a service's name before '='
    /// applies to that service's connections, one without to every service that has no value of its own. Such an
    /// option is `.repeatable`.
    public let perService: Bool
    /// What the value is, as the help shows it (`seconds`, `address:port`); empty for a flag.
    public let valueName: StaticString
    /// The line of `--help`.
    public let help: StaticString
    /// The README's and the man page's text: plain sentences, with `code` in backquotes.
    public let manual: StaticString

    /// The entry of the table for `key`.
    public static func of(_ key: OptionKey) -> OptionDescription { key.option }

    /// The entry of `optionTable` whose long name is `name`, given as bytes without `--`; nil for none.
    static func named(_ name: Substring.UTF8View) -> OptionDescription? {
        var raw: UInt8 = 0
        while let key = OptionKey(rawValue: raw) {
            raw += 1
            let option = key.option
            let bytes = UnsafeBufferPointer(start: option.name.utf8Start, count: option.name.utf8CodeUnitCount)
            if bytes.elementsEqual(name) { return option }
        }
        return nil
    }

    /// The entry of `optionTable` whose one-letter name is `letter`; nil for none.
    static func named(short letter: UInt8) -> OptionDescription? {
        var raw: UInt8 = 0
        while let key = OptionKey(rawValue: raw) {
            raw += 1
            let option = key.option
            if option.shortName.utf8CodeUnitCount == 1 && option.shortName.utf8Start.pointee == letter { return option }
        }
        return nil
    }
}
