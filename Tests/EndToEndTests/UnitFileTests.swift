import Foundation
import Testing

/// The shipped systemd units, checked by systemd itself.
@Suite struct UnitFileTests {
    static let units = [
        "tcp-crossover-smtp.socket", "tcp-crossover-smtp.service", "tcp-crossover-http.socket",
        "tcp-crossover-http@.service", "tcp-crossover@143.socket", "tcp-crossover@143.service",
    ]

    /// The shipped file of a unit: an instance of the port-keyed template (`tcp-crossover@143.socket`) comes from
    /// the template, since `verify` gives a bare template an instance of its own (`i`), which is no port.
    static func source(of unit: String) -> String {
        unit.hasPrefix("tcp-crossover@") ? unit.replacingOccurrences(of: "@143.", with: "@.") : unit
    }

    /// The units in a temporary directory, with ExecStart= pointing at the built binary (verify checks that the
    /// program exists).
    static func stagedUnits() throws -> TemporaryDirectory {
        let directory = TemporaryDirectory()
        for unit in units {
            let text = try String(contentsOfFile: repositoryPath("units/\(source(of: unit))"), encoding: .utf8)
            try text.replacingOccurrences(of: "/usr/bin/tcp-crossover", with: relayBinary)
                .write(toFile: "\(directory.path)/\(unit)", atomically: true, encoding: .utf8)
        }
        return directory
    }

    @Test func everyShippedUnit_isChecked() throws {
        let shipped = try FileManager.default.contentsOfDirectory(atPath: repositoryPath("units")).sorted()
        #expect(shipped == Set(Self.units.map(Self.source(of:))).sorted())
    }

    @Test func units_passSystemdAnalyzeVerify() throws {
        let directory = try Self.stagedUnits()
        let verify = try ChildProcess(
            "/usr/bin/systemd-analyze", ["verify"] + Self.units.map { "\(directory.path)/\($0)" })
        #expect(verify.waitForExit(timeout: 60) == 0, "\(verify.standardError)")
        #expect(verify.standardError.isEmpty, "\(verify.standardError)")
    }

    @Test(arguments: ["tcp-crossover-smtp.service", "tcp-crossover-http@.service", "tcp-crossover@143.service"])
    func service_exposureIsTwoOrLower(unit: String) throws {
        let directory = try Self.stagedUnits()
        let security = try ChildProcess(
            "/usr/bin/systemd-analyze", ["security", "--offline=yes", "--no-pager", "\(directory.path)/\(unit)"])
        #expect(security.waitForExit(timeout: 60) == 0, "\(security.standardError)")
        let line = security.standardOutput.split(separator: "\n").first { $0.contains("Overall exposure level") }
        let score = line.flatMap { Double($0.split(separator: ":").last!.split(separator: " ").first!) }
        #expect(score != nil && score! <= 2.0, "\(line ?? "no score")")
    }

    @Test(arguments: ["tcp-crossover-smtp.service", "tcp-crossover-http@.service", "tcp-crossover@.service"])
    func service_runsWithoutAnyCapability(unit: String) throws {
        let text = try String(contentsOfFile: repositoryPath("units/\(unit)"), encoding: .utf8)
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.contains("CapabilityBoundingSet="))
        #expect(lines.contains("AmbientCapabilities="))
        #expect(lines.contains("DynamicUser=yes"))
        #expect(lines.contains("NoNewPrivileges=yes"))
    }
}
