import Glibc

/// Starts tcp-crossover from a configuration: resolves, binds, detaches, runs the engine, cleans up.
public enum Launcher {
    /// Runs until the relay stops; returns the exit status. Failures at start are reported in one line.
    public static func run(_ configuration: Configuration) -> CInt {
        Engine.prepareProcess()
        let level: LogLevel = configuration.debug ? .debug : .info
        Log.configure(target: .standardError, level: level)
        do {
            try runStandalone(configuration, level: level)
            return ExitStatus.success
        } catch {
            if Log.currentTarget == .standardError {
                Log.console(error.message)
            } else {
                Log.error(error.message)
            }
            return error.status
        }
    }

    private static func runStandalone(_ configuration: Configuration, level: LogLevel) throws(StartupError) {
        let service = try resolve(configuration.remote)
        var pidfile: Pidfile? = nil
        if let path = configuration.pidfile { pidfile = try Pidfile(path: path) }
        var listeners: [ListeningSocket] = []
        var closeListeners = true
        defer { if closeListeners { for listener in listeners { Syscall.close(listener.fd) } } }
        for local in configuration.locals {
            let addresses: [SocketAddress]
            switch local.resolve() {
            case .success(let resolved): addresses = resolved
            case .failure(let error): throw StartupError(ExitStatus.noHost, "\(error) (in --local \(local))")
            }
            for address in addresses {
                let (fd, bound) = try Listener.open(address, dualStack: configuration.dualStack)
                listeners.append(ListeningSocket(fd: fd, address: bound, service: 0))
            }
        }

        let background = !configuration.foreground && !configuration.debug
        var readiness: Daemon.Readiness? = nil
        if background {
            readiness = try Daemon.detach()
            Log.configure(target: .syslog, level: level)
        }
        do throws(StartupError) {
            try pidfile?.record(Syscall.processID)
            let engine = Engine(services: [service], options: configuration.relay)
            let threads = configuration.relay.threads > 0 ? configuration.relay.threads : Syscall.onlineProcessors
            let startLine =
                "tcp-crossover \(tcpCrossoverVersion) listening on "
                + listeners.map(\.address.description).joined(separator: ", ")
                + ", relaying to \(describe(service)) (pid \(Syscall.processID), \(threads) threads)"
            do {
                try engine.run(listeners: listeners, connections: []) {
                    Log.notice(startLine)
                    if let ready = readiness.take() { ready.ready() }
                }
            } catch {
                throw StartupError(ExitStatus.systemError, error.description)
            }
        } catch {
            if let readiness = readiness.take() { readiness.failed(error) }
            if let pidfile = pidfile.take() { pidfile.remove() }
            throw error
        }
        closeListeners = false
        for listener in listeners { Syscall.close(listener.fd) }
        if let pidfile = pidfile.take() { pidfile.remove() }
        Log.notice("stopped: \(describeTotals())")
    }

    static func resolve(_ remote: Endpoint) throws(StartupError) -> Service {
        switch remote.resolve() {
        case .success(let addresses): return Service(remote: remote, addresses: addresses)
        case .failure(let error): throw StartupError(ExitStatus.noHost, "\(error) (in --remote \(remote))")
        }
    }

    static func describe(_ service: Service) -> String {
        let addresses = service.addresses.map(\.description).joined(separator: ", ")
        if case .name = service.remote.host { return "\(service.remote) (\(addresses))" }
        return addresses
    }

    private static func describeTotals() -> String { "" }
}
