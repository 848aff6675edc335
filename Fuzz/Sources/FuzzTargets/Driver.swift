import CFuzzerDriver
import Glibc

/// The target that the C callback runs: set once by `runFuzzer` before libFuzzer starts.
nonisolated(unsafe) private var currentTarget: ([UInt8]) -> Void = { _ in }

/// Runs `target` under libFuzzer with the process's arguments (a build with `-sanitize=fuzzer -DFUZZING`), or,
/// in an ordinary build, once for every file named on the command line (every file of a named directory), so that
/// a corpus or a crash file can be replayed without libFuzzer.
public func runFuzzer(_ target: @escaping ([UInt8]) -> Void) -> Never {
    currentTarget = target
    #if FUZZING
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        let status = LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            currentTarget(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
            return 0
        }
        exit(status)
    #else
        var files = 0
        for argument in CommandLine.arguments.dropFirst() where !argument.hasPrefix("-") {
            for path in filesIn(argument) {
                guard let data = readFile(path) else {
                    print("cannot read \(path)")
                    exit(1)
                }
                currentTarget(data)
                files += 1
            }
        }
        print(
            "\(CommandLine.arguments[0]): ran \(files) inputs without libFuzzer (build with -sanitize=fuzzer -DFUZZING to fuzz)"
        )
        exit(0)
    #endif
}

#if FUZZING
    /// libFuzzer's own `main` (in the runtime archive that -sanitize=fuzzer links) references this symbol, and the
    /// linker pulls that `main` in even though SwiftPM points `main` at the executable's own entry point with
    /// `--defsym`; it is defined so that the link succeeds. `runFuzzer` passes its own callback to
    /// `LLVMFuzzerRunDriver`, so this runs only if libFuzzer's `main` ever ran instead of ours: then it stops, rather
    /// than fuzzing nothing.
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
        fatalError("libFuzzer's main ran instead of the fuzz target's: the entry point was not linked as expected")
    }
#endif

/// `path` itself, or the regular files in it when it is a directory.
private func filesIn(_ path: String) -> [String] {
    guard let directory = opendir(path) else { return [path] }
    defer { closedir(directory) }
    var files: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name == "." || name == ".." { continue }
        files.append(path + "/" + name)
    }
    return files.sorted()
}

private func readFile(_ path: String) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&buffer, 1, buffer.count, file)
        if count <= 0 { break }
        data += buffer[0..<count]
    }
    return ferror(file) == 0 ? data : nil
}

/// Stops the process with `message` (and the input, escaped) when `condition` is false: a crash that libFuzzer
/// reports and saves the input of. Unlike `precondition`, it also fires in -Ounchecked builds.
@inline(__always)
func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, input: [UInt8]) {
    if !condition() {
        fatalError("property violated: \(message())\n  input: \(escaped(input))")
    }
}

/// The bytes as a Swift string literal's contents, for messages.
func escaped(_ bytes: [UInt8]) -> String {
    var text = "\""
    for byte in bytes {
        switch byte {
        case UInt8(ascii: "\""): text += "\\\""
        case UInt8(ascii: "\\"): text += "\\\\"
        case 0x20..<0x7f: text.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            let hex = String(byte, radix: 16)
            text += "\\x" + (hex.count == 1 ? "0" + hex : hex)
        }
    }
    return text + "\""
}

func escaped(_ text: String) -> String { escaped(Array(text.utf8)) }

/// Whether `text` is printable ASCII only (one line, nothing a terminal interprets).
func isPrintableASCII(_ text: String) -> Bool {
    text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7f }
}
