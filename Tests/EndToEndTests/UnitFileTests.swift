import Foundation
import Testing

/// The shipped systemd units, checked by systemd itself.
@Suite struct UnitFileTests {
    static let units = [
        "tcp-crossover-smtp.socket", "tcp-crossover-smtp.service", "tcp-crossover-http.socket",
        "tcp-crossover-http@.service",
    ]

    /// The units in a temporary directory, with ExecStart= pointing at the built binary (verify checks that the
    /// program exists).
    static func stagedUnits() throws -> TemporaryDirectory {
        let directory = TemporaryDirectory()
        for unit in units {
            let text = try String(contentsOfFile: repositoryPath("units/\(unit)"), encoding: .utf8)
            try text.replacingOccurrences(of: "/usr/bin/tcp-crossover", with: relayBinary)
                .write(toFile: "\(directory.path)/\(unit)", atomically: true, encoding: .utf8)
        }
        return directory
    }

    @Test func units_passSystemdAnalyzeVerify() throws {
        let directory = try Self.stagedUnits()
        let verify = try ChildProcess(
            "/usr/bin/systemd-analyze", ["verify"] + Self.units.map { "\(directory.path)/\($0)" })
        #expect(verify.waitForExit(timeout: 60) == 0, "\(verify.standardError)")
        #expect(verify.standardError.isEmpty, "\(verify.standardError)")
    }

    @Test(arguments: ["tcp-crossover-smtp.service", "tcp-crossover-http@.service"])
    func service_exposureIsTwoOrLower(unit: String) throws {
        let directory = try Self.stagedUnits()
        let security = try ChildProcess(
            "/usr/bin/systemd-analyze", ["security", "--offline=yes", "--no-pager", "\(directory.path)/\(unit)"])
        #expect(security.waitForExit(timeout: 60) == 0, "\(security.standardError)")
        let line = security.standardOutput.split(separator: "\n").first { $0.contains("Overall exposure level") }
        let score = line.flatMap { Double($0.split(separator: ":").last!.split(separator: " ").first!) }
        #expect(score != nil && score! <= 2.0, "\(line ?? "no score")")
    }

    @Test(arguments: ["tcp-crossover-smtp.service", "tcp-crossover-http@.service"])
    func service_runsWithoutAnyCapability(unit: String) throws {
        let text = try String(contentsOfFile: repositoryPath("units/\(unit)"), encoding: .utf8)
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.contains("CapabilityBoundingSet="))
        #expect(lines.contains("AmbientCapabilities="))
        #expect(lines.contains("DynamicUser=yes"))
        #expect(lines.contains("NoNewPrivileges=yes"))
    }
}
