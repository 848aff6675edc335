import ArgumentParser
import Foundation
import TCPCrossover
import Testing

@testable import tcp_crossover

/// The quick reader of the command line must agree with swift-argument-parser on every line it accepts, and leave
/// everything else to it.
@Suite struct QuickCommandLineTests {
    static let validLines: [[String]] = [
        ["--local", "[::]:80", "--remote", "127.0.0.1:80", "--pidfile=/var/run/tcp-cross-http.pid"],
        ["--local", "[::]:25", "--remote", "[2804:aabb:beba:cafe::ccdd]:25", "--pidfile", "/run/smtp.pid"],
        ["--remote", "127.0.0.1:25"],
        ["--remote=localhost:25", "--debug"],
        ["--local", "[::1]:0", "--local=127.0.0.1:0", "--remote", "127.0.0.1:8000", "-f", "--dual-stack"],
        [
            "--remote", "127.0.0.1:1", "--bs", "64k", "--pipe-memory", "16m", "--connect-timeout", "2.5",
            "--threads", "3",
            "--exit-idle-time", "30", "--max-connections", "100", "--idle-timeout", "600", "--keepalive", "off",
            "--shutdown-timeout", "0", "--user", "nobody", "--group", "nogroup", "--foreground",
        ],
        ["--remote", "127.0.0.1:1", "--remote", "127.0.0.1:2", "--threads=1", "--threads", "2"],
        ["--keepalive=60,10,5", "--remote", "[fe80::1%lo]:22", "--connect-timeout=0.25"],
        ["--remote", "127.0.0.1:1", "--loopback-congestion-control", "system"],
        ["--remote", "127.0.0.1:1", "--loopback-congestion-control=cubic"],
        ["--remote", "127.0.0.1:1", "--max-connections-per-client", "20", "--client-prefix-length=24,56"],
        ["--remote", "127.0.0.1:1", "--max-new-connections-per-client", "30/60", "--max-connections-per-client=5"],
        ["--remote", "127.0.0.1:1", "--no-proxy-warning", "--proxy-protocol", "v2"],
        ["--remote", "127.0.0.1:1", "--metrics", "[::1]:9100", "--local", "[::]:25"],
        ["--remote", "127.0.0.1:1", "--metrics=127.0.0.1:0"],
        ["--remote", "127.0.0.1:1", "--log-connections", "no"],
    ]

    @Test(arguments: validLines)
    func quickReading_agreesWithArgumentParser(arguments: [String]) throws {
        let quick = try #require(QuickCommandLine.parse(arguments))
        let full = try TCPCrossoverCommand.parse(arguments).options
        #expect(quick == full)
        #expect(try quick.configuration() == full.configuration())
    }

    @Test(arguments: [
        ["--help"], ["-h"], ["--version"], ["--remote", "127.0.0.1:1", "--help"], ["--local", "[::]:80"],
        ["--remote"], ["--remote", "--debug"], ["--remote", "-x"], ["--remote", "127.0.0.1:1", "--debug=yes"],
        ["--remote", "127.0.0.1:1", "--no-proxy-warning=yes"],
        ["--remote", "127.0.0.1:1", "--frobnicate", "1"], ["--remote", "127.0.0.1:1", "extra"],
        ["--pidfile=", "--remote", "127.0.0.1:1"], ["--remote", "127.0.0.1:1", "-fd"],
        ["--generate-completion-script", "bash"], ["--experimental-dump-help"], [],
    ])
    func quickReading_leavesEverythingElseToArgumentParser(arguments: [String]) {
        #expect(QuickCommandLine.parse(arguments) == nil)
    }

    /// swift-argument-parser's view of the command (its property wrappers) is `optionTable`'s: the same options with
    /// the same names, value or flag, repeatable or not, help line and value name. The quick reader reads its names
    /// and kinds from the table, so it knows exactly the command's options.
    @Test func argumentParsersOptions_areTheTables() throws {
        let process = try ChildProcess(relayBinary, ["--experimental-dump-help"])
        #expect(process.waitForExit() == 0)
        let json = try JSONSerialization.jsonObject(with: Data(process.standardOutput.utf8)) as? [String: Any]
        let command = try #require(json?["command"] as? [String: Any])
        let arguments = try #require(command["arguments"] as? [[String: Any]])
        var seen: [String] = []
        for argument in arguments {
            let names = argument["names"] as? [[String: Any]] ?? []
            let long = try #require(names.first { $0["kind"] as? String == "long" }?["name"] as? String)
            if long == "help" || long == "version" { continue }
            seen.append(long)
            let option = try #require(optionTable.first { "\($0.name)" == long }, "--\(long) is not in optionTable")
            let kind = argument["kind"] as? String
            let repeating = argument["isRepeating"] as? Bool ?? false
            switch option.kind {
            case .flag: #expect(kind == "flag" && !repeating, "--\(long)")
            case .value: #expect(kind == "option" && !repeating, "--\(long)")
            case .repeatable: #expect(kind == "option" && repeating, "--\(long)")
            }
            let shorts = names.filter { $0["kind"] as? String == "short" }.compactMap { $0["name"] as? String }
            #expect(shorts == (option.shortName.utf8CodeUnitCount > 0 ? ["\(option.shortName)"] : []), "--\(long)")
            #expect(argument["abstract"] as? String == "\(option.help)", "--\(long)")
            if option.kind != .flag {
                #expect(argument["valueName"] as? String == "\(option.valueName)", "--\(long)")
            }
        }
        #expect(seen.sorted() == optionTable.map { "\($0.name)" }.sorted())
    }

    /// Each table entry's kind is what the quick reader does with it: a value option keeps its last value, a
    /// repeatable one collects them all, a flag takes no value.
    @Test func quickReading_followsTheTablesKinds() throws {
        for option in optionTable {
            let name = "--\(option.name)"
            let valid = OptionTableTests.behaviour(option.key).arguments
            switch option.kind {
            case .flag:
                #expect(QuickCommandLine.parse(["--remote", "127.0.0.1:1", name]) != nil, "\(name)")
                #expect(QuickCommandLine.parse(["--remote", "127.0.0.1:1", "\(name)=x"]) == nil, "\(name)")
            case .value, .repeatable:
                #expect(QuickCommandLine.parse(["--remote", "127.0.0.1:1", name]) == nil, "\(name)")
                let value = try #require(valid.last)
                let once = try #require(QuickCommandLine.parse(["--remote", "127.0.0.1:1"] + valid))
                let twice = try #require(QuickCommandLine.parse(["--remote", "127.0.0.1:1", name, value] + valid))
                // Given once more, a repeatable option changes the options (one more value); a value option does
                // not (the last value counts).
                #expect((once != twice) == (option.kind == .repeatable), "\(name)")
            }
        }
    }
}
