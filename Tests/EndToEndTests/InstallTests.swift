import Foundation
import Testing

/// `make install` puts every file in place under DESTDIR (with the built binary standing in for the release
/// build, which the test does not make).
@Suite struct InstallTests {
    static func install(prefix: String) throws -> (TemporaryDirectory, ChildProcess) {
        let destination = TemporaryDirectory()
        let make = try ChildProcess(
            "/usr/bin/make",
            [
                "-C", repositoryPath(""), "install-files", "DESTDIR=\(destination.path)", "PREFIX=\(prefix)",
                "BINARY=\(relayBinary)", "UNITDIR=/lib/systemd/system",
            ])
        #expect(make.waitForExit(timeout: 60) == 0, "\(make.standardError)")
        return (destination, make)
    }

    @Test func makeInstall_putsBinaryUnitsXinetdEntryManPageAndCompletionsInPlace() throws {
        let (destination, _) = try Self.install(prefix: "/usr")
        let root = destination.path
        let files = [
            "/usr/bin/tcp-crossover", "/usr/share/man/man8/tcp-crossover.8", "/etc/xinetd.d/tcp-crossover-smtp",
            "/lib/systemd/system/tcp-crossover-smtp.socket", "/lib/systemd/system/tcp-crossover-smtp.service",
            "/lib/systemd/system/tcp-crossover-http.socket", "/lib/systemd/system/tcp-crossover-http@.service",
            "/usr/share/bash-completion/completions/tcp-crossover", "/usr/share/zsh/vendor-completions/_tcp-crossover",
            "/usr/share/fish/vendor_completions.d/tcp-crossover.fish",
        ]
        for file in files {
            #expect(FileManager.default.fileExists(atPath: root + file), "\(file) missing")
        }
        #expect(FileManager.default.isExecutableFile(atPath: root + "/usr/bin/tcp-crossover"))
        for completion in files.filter({ $0.contains("completion") }) {
            let text = try String(contentsOfFile: root + completion, encoding: .utf8)
            #expect(text.contains("remote") && text.contains("proxy-protocol"), "\(completion)")
        }
        let service = try String(
            contentsOfFile: root + "/lib/systemd/system/tcp-crossover-smtp.service", encoding: .utf8)
        #expect(service.contains("ExecStart=/usr/bin/tcp-crossover --remote 127.0.0.1:10125 --proxy-protocol v2"))
    }

    @Test func makeInstall_withAnotherPrefix_pointsTheUnitsAtIt() throws {
        let (destination, _) = try Self.install(prefix: "/usr/local")
        let service = try String(
            contentsOfFile: destination.path + "/lib/systemd/system/tcp-crossover-http@.service", encoding: .utf8)
        #expect(service.contains("ExecStart=/usr/local/bin/tcp-crossover --remote 127.0.0.1:80"))
        let entry = try String(contentsOfFile: destination.path + "/etc/xinetd.d/tcp-crossover-smtp", encoding: .utf8)
        #expect(entry.contains("server\t\t= /usr/local/bin/tcp-crossover"))
    }
}
