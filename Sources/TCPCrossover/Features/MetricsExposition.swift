/// The Prometheus text exposition format, version 0.0.4, of a `MetricsSnapshot`: `# HELP` and `# TYPE` before each
/// metric, counters ending in `_total`, histograms as cumulative `_bucket{le="..."}` series with `_sum` and `_count`,
/// times in seconds. No label ever holds a client's address: the `remote` label is a backend's.
public enum MetricsExposition {
    /// The Content-Type of the text.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(_ snapshot: MetricsSnapshot) -> String {
        var text = ""
        text.reserveCapacity(4096 + snapshot.services.count * 4096)
        let services = snapshot.services

        family(&text, "tcp_crossover_build_info", "gauge", "Always 1; the version of tcp-crossover in a label.")
        sample(&text, "tcp_crossover_build_info", [("version", snapshot.version)], "1")

        family(
            &text, "tcp_crossover_connections_accepted_total", "counter",
            "Connections accepted (or taken over from inetd or systemd), per service.")
        for service in services {
            sample(&text, "tcp_crossover_connections_accepted_total", [("service", service.name)], service.accepted)
        }

        family(&text, "tcp_crossover_connections_active", "gauge", "Connections open now (connecting or relaying).")
        for service in services {
            sample(&text, "tcp_crossover_connections_active", [("service", service.name)], service.active)
        }

        family(
            &text, "tcp_crossover_connections_ended_total", "counter",
            "Connections ended, by how they ended (the end= token of the log line).")
        for service in services {
            for end in ConnectionEnd.allCases {
                sample(
                    &text, "tcp_crossover_connections_ended_total",
                    [("service", service.name), ("end", end.token.description)], service.ended[end.rawValue])
            }
        }

        family(
            &text, "tcp_crossover_connections_refused_total", "counter",
            "Clients refused before any connection to the remote, by reason.")
        for service in services {
            for refusal in Refusal.allCases {
                sample(
                    &text, "tcp_crossover_connections_refused_total",
                    [("service", service.name), ("reason", refusal.token.description)],
                    service.refused[refusal.rawValue])
            }
        }

        family(
            &text, "tcp_crossover_connect_failures_total", "counter",
            "Connects to a remote address that failed, by remote address and reason.")
        for failure in snapshot.connectFailures.sorted(by: Self.order) {
            let name = failure.service < services.count ? services[failure.service].name : "default"
            sample(
                &text, "tcp_crossover_connect_failures_total",
                [("service", name), ("remote", failure.remote), ("reason", failure.reason.token.description)],
                failure.count)
        }

        family(
            &text, "tcp_crossover_bytes_total", "counter",
            "Bytes relayed, by direction (client-to-server is 'up' in the log line).")
        for service in services {
            sample(
                &text, "tcp_crossover_bytes_total", [("service", service.name), ("direction", "client-to-server")],
                service.bytesUp)
            sample(
                &text, "tcp_crossover_bytes_total", [("service", service.name), ("direction", "server-to-client")],
                service.bytesDown)
        }

        family(
            &text, "tcp_crossover_connect_duration_seconds", "histogram",
            "Time from accepting a client to being connected to the remote, failover included.")
        for service in services {
            histogram(&text, "tcp_crossover_connect_duration_seconds", service.name, service.connectTime)
        }

        family(
            &text, "tcp_crossover_connection_duration_seconds", "histogram",
            "Life of the connections that reached their remote, from accept to end.")
        for service in services {
            histogram(&text, "tcp_crossover_connection_duration_seconds", service.name, service.duration)
        }

        family(
            &text, "tcp_crossover_accept_pauses_total", "counter",
            "Times an event loop paused accepting (new clients wait in the listen backlog), by reason.")
        for reason in AcceptPause.allCases {
            sample(
                &text, "tcp_crossover_accept_pauses_total", [("reason", reason.token.description)],
                snapshot.acceptPauses[reason.rawValue])
        }

        family(
            &text, "tcp_crossover_connection_limit", "gauge",
            "Connections relayed at once before accepting pauses (--max-connections).")
        sample(&text, "tcp_crossover_connection_limit", [], String(snapshot.connectionLimit))

        family(&text, "tcp_crossover_event_loops", "gauge", "Event loop threads relaying connections.")
        sample(&text, "tcp_crossover_event_loops", [], String(snapshot.eventLoops))

        if let wide = snapshot.loopbackWideSegments {
            family(
                &text, "tcp_crossover_loopback_wide_segment_connections", "gauge",
                "Connections to servers on this machine that have the loopback interface's segments "
                    + "(--loopback-mss auto); the others get the small ones.")
            sample(&text, "tcp_crossover_loopback_wide_segment_connections", [], String(wide.open))
            if let room = wide.room {
                family(
                    &text, "tcp_crossover_loopback_wide_segment_room", "gauge",
                    "How many such connections the last reading of TCP memory left room for (read at most once a "
                        + "second, as connections to servers on this machine start).")
                sample(&text, "tcp_crossover_loopback_wide_segment_room", [], String(room))
            }
        }

        let process = snapshot.process
        family(&text, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
        sample(&text, "process_start_time_seconds", [], seconds(process.startTime))
        family(&text, "process_max_fds", "gauge", "Maximum number of open file descriptors.")
        sample(&text, "process_max_fds", [], String(process.maximumDescriptors))
        if let open = process.openDescriptors {
            family(&text, "process_open_fds", "gauge", "Number of open file descriptors.")
            sample(&text, "process_open_fds", [], String(open))
        }
        if let threads = process.threads {
            family(&text, "process_threads", "gauge", "Number of threads of the process.")
            sample(&text, "process_threads", [], String(threads))
        }
        if let cpu = process.cpuSeconds {
            family(&text, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
            sample(&text, "process_cpu_seconds_total", [], seconds(cpu))
        }
        if let resident = process.residentBytes {
            family(&text, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
            sample(&text, "process_resident_memory_bytes", [], String(resident))
        }
        return text
    }

    /// Failures in a stable order: by service, remote, reason.
    private static func order(_ a: MetricsSnapshot.ConnectFailureCount, _ b: MetricsSnapshot.ConnectFailureCount)
        -> Bool
    {
        if a.service != b.service { return a.service < b.service }
        if a.remote != b.remote { return a.remote < b.remote }
        return a.reason.rawValue < b.reason.rawValue
    }

    private static func family(_ text: inout String, _ name: String, _ type: String, _ help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    private static func sample(_ text: inout String, _ name: String, _ labels: [(String, String)], _ value: UInt64) {
        sample(&text, name, labels, String(value))
    }

    private static func sample(_ text: inout String, _ name: String, _ labels: [(String, String)], _ value: String) {
        text += name
        if !labels.isEmpty {
            text += "{"
            for (index, (label, labelValue)) in labels.enumerated() {
                if index > 0 { text += "," }
                text += label
                text += "=\""
                text += escapedLabelValue(labelValue)
                text += "\""
            }
            text += "}"
        }
        text += " "
        text += value
        text += "\n"
    }

    private static func histogram(
        _ text: inout String, _ name: String, _ service: String, _ histogram: MetricsSnapshot.Histogram
    ) {
        var cumulative: UInt64 = 0
        for (index, count) in histogram.counts.enumerated() {
            cumulative += count
            let bound =
                index < histogram.buckets.bounds.count
                ? seconds(milliseconds: histogram.buckets.bounds[index]) : "+Inf"
            sample(&text, name + "_bucket", [("service", service), ("le", bound)], cumulative)
        }
        sample(
            &text, name + "_sum", [("service", service)],
            seconds(milliseconds: Int64(clamping: histogram.sumMilliseconds)))
        sample(&text, name + "_count", [("service", service)], cumulative)
    }

    /// `0.001`, `2.5`, `10`: milliseconds as seconds, exactly, without trailing zeros.
    static func seconds(milliseconds: Int64) -> String {
        let whole = milliseconds / 1000
        var fraction = milliseconds % 1000
        guard fraction != 0 else { return String(whole) }
        var digits = 3
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let padded = String(fraction)
        return "\(whole)." + String(repeating: "0", count: digits - padded.count) + padded
    }

    /// Seconds with a fraction, to the millisecond.
    static func seconds(_ value: Double) -> String {
        seconds(milliseconds: Int64((value * 1000).rounded()))
    }

    /// A label value with backslash, double quote and line feed escaped, as the format requires.
    static func escapedLabelValue(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == 0x5c || $0 == 0x22 || $0 == 0x0a }) else { return value }
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
