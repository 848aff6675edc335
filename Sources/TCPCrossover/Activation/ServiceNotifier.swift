/// Keeps the service manager informed through sd_notify(3), when it listens ($NOTIFY_SOCKET is set): READY=1 once
/// every socket is served, STATUS= with live figures (at most once a second, and only when they changed),
/// WATCHDOG=1 at half the interval systemd expects, STOPPING=1 when a stop begins.
final class ServiceNotifier: @unchecked Sendable {
    private let engine: Engine
    private let enabled: Bool
    /// Only the first loop's periodic task touches it.
    private var lastStatus = ""

    init(engine: Engine, exitIdleTime: Int64?) {
        self.engine = engine
        enabled = Systemd.notificationsExpected
        if enabled {
            engine.addPeriodicTask(PeriodicTask(interval: 1000) { [self] in refreshStatus() })
            if let microseconds = Systemd.watchdogInterval() {
                engine.addPeriodicTask(
                    PeriodicTask(interval: Int64(max(1, microseconds / 2000))) { Systemd.notify("WATCHDOG=1") })
            }
        }
        engine.onStop = { [self] in
            if enabled { Systemd.notify("STOPPING=1\nSTATUS=stopping: \(engine.statistics.snapshot())") }
        }
        if let exitIdleTime { IdleExit(engine: engine, after: exitIdleTime).schedule() }
    }

    /// READY=1, with the first STATUS=.
    func ready() {
        guard enabled else { return }
        lastStatus = status()
        Systemd.notify("READY=1\nSTATUS=\(lastStatus)")
    }

    private func refreshStatus() {
        let current = status()
        guard current != lastStatus else { return }
        lastStatus = current
        Systemd.notify("STATUS=\(current)")
    }

    /// The figures, as the SIGUSR1 line gives them: `3 active, 120 accepted, 0 refused, 1 failed connects, 1.2 MB
    /// up, 80.5 MB down`.
    private func status() -> String {
        engine.statistics.snapshot().description
    }
}

/// `--exit-idle-time`: stops the engine after that long with no connection, so that systemd starts the service
/// again on the next one.
final class IdleExit: @unchecked Sendable {
    private let engine: Engine
    private let limit: Int64
    /// Only the first loop's periodic task touches these.
    private var idleSince = Syscall.monotonicMilliseconds()
    private var lastAccepted = 0

    init(engine: Engine, after milliseconds: Int64) {
        self.engine = engine
        self.limit = milliseconds
    }

    func schedule() {
        engine.addPeriodicTask(PeriodicTask(interval: min(1000, max(10, limit / 4))) { [self] in check() })
    }

    private func check() {
        let now = Syscall.monotonicMilliseconds()
        let figures = engine.statistics.snapshot()
        if figures.active > 0 || figures.accepted != lastAccepted {
            lastAccepted = figures.accepted
            idleSince = now
        } else if now - idleSince >= limit {
            Log.notice("no connection for \(Double(limit) / 1000) s: exiting (--exit-idle-time)")
            engine.requestStop()
        }
    }
}
