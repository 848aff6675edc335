import Foundation
import TCPCrossover
import Testing

/// The README's options table and the man page's OPTIONS section are rendered from `optionTable`: the committed
/// files hold exactly what it renders between their markers. `make docs` (TCX_WRITE_DOCS=1) writes them instead.
@Suite struct OptionDocumentationTests {
    static let readmeStart =
        "<!-- Generated from optionTable (Sources/TCPCrossover/Startup/OptionTable.swift) by `make docs`. -->\n"
    static let readmeEnd = "<!-- End of the generated options table. -->\n"
    static let manualStart =
        ".\\\" Generated from optionTable (Sources/TCPCrossover/Startup/OptionTable.swift) by `make docs`.\n"
    static let manualEnd = ".\\\" End of the generated option list.\n"

    /// An option's manual text, with the sentence that says it may be given per service when it may.
    static func manual(_ option: OptionDescription) -> String {
        guard option.perService else { return "\(option.manual)" }
        return "\(option.manual) Per service as `NAME=VALUE` (docs/OPERATIONS.md: Several services in one process)."
    }

    /// The README's options table, in Markdown.
    static func markdownTable() -> String {
        var text = "| option | meaning |\n|---|---|\n"
        for option in optionTable {
            let value = option.valueName.utf8CodeUnitCount > 0 ? " \(option.valueName)" : ""
            var names = "`--\(option.name)\(value)`".replacingOccurrences(of: "|", with: "\\|")
            if option.shortName.utf8CodeUnitCount > 0 { names = "`-\(option.shortName)`, " + names }
            text += "| \(names) | \(manual(option).replacingOccurrences(of: "|", with: "\\|")) |\n"
        }
        return text + "| `--help`, `--version` | Print and exit 0. |\n"
    }

    /// The man page's option list, in roff: a `.TP` paragraph per option, one sentence a line, `code` in bold.
    static func manualList() -> String {
        func roff(_ text: String) -> String {
            var result = ""
            for (index, part) in text.split(separator: "`", omittingEmptySubsequences: false).enumerated() {
                let escaped = part.replacingOccurrences(of: "\\", with: "\\e")
                result +=
                    index % 2 == 1 ? "\\fB" + escaped.replacingOccurrences(of: "-", with: "\\-") + "\\fR" : escaped
            }
            return result.replacingOccurrences(of: ". ", with: ".\n")
        }
        var text = ""
        for option in optionTable {
            let long = "\\-\\-" + "\(option.name)".replacingOccurrences(of: "-", with: "\\-")
            text += ".TP\n"
            if option.valueName.utf8CodeUnitCount > 0 {
                text += ".BI \(long) \" \(option.valueName)\"\n"
            } else if option.shortName.utf8CodeUnitCount > 0 {
                text += ".BR \\-\(option.shortName) \", \" \(long)\n"
            } else {
                text += ".B \(long)\n"
            }
            text += roff(manual(option)) + "\n"
        }
        return text + ".TP\n.BR \\-\\-help \", \" \\-\\-version\nPrint and exit 0.\n"
    }

    /// Checks (or with TCX_WRITE_DOCS=1 writes) what stands between `start` and `end` in the file at `path`.
    static func check(_ path: String, between start: String, and end: String, is rendered: String) throws {
        let file = repositoryPath(path)
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let begin = try #require(text.range(of: start), "\(path) has no line \(start)")
        let finish = try #require(text.range(of: end, range: begin.upperBound..<text.endIndex), "\(path): \(end)")
        let committed = String(text[begin.upperBound..<finish.lowerBound])
        if ProcessInfo.processInfo.environment["TCX_WRITE_DOCS"] == "1" {
            var written = text
            written.replaceSubrange(begin.upperBound..<finish.lowerBound, with: rendered)
            try written.write(toFile: file, atomically: true, encoding: .utf8)
        } else {
            #expect(committed == rendered, "\(path) differs from optionTable: run make docs")
        }
    }

    @Test func readme_optionsTable_isTheTables() throws {
        try Self.check("README.md", between: Self.readmeStart, and: Self.readmeEnd, is: Self.markdownTable())
    }

    @Test func manualPage_optionList_isTheTables() throws {
        try Self.check(
            "man/tcp-crossover.8", between: Self.manualStart, and: Self.manualEnd, is: Self.manualList())
    }
}
