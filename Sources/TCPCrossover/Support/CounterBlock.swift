import CLinux

/// Counters that one thread (an event loop) adds to while other threads read them: a relaxed load and store each
/// (`tcx_counter_add`), which compile to plain moves, so that counting costs the writer no more than a plain add (no
/// locked instruction) and a reader never sees a torn value. The block starts on a pair of cache lines and fills
/// whole pairs (the hardware's adjacent-line prefetch fetches lines in pairs), so that it shares no line with what
/// another thread writes: two loops adding to one line would move it between their cores at every add.
final class CounterBlock: @unchecked Sendable {
    static let alignment = 128
    private let counters: UnsafeMutablePointer<UInt64>

    init(count: Int) {
        let bytes = max(1, (count * 8 + Self.alignment - 1) / Self.alignment) * Self.alignment
        counters = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Self.alignment)
            .initializeMemory(as: UInt64.self, repeating: 0, count: bytes / 8)
    }

    deinit {
        UnsafeMutableRawPointer(counters).deallocate()
    }

    /// Where the block starts, for the tests.
    var address: Int { Int(bitPattern: counters) }

    /// Adds to counter `index`; only the block's writer thread calls it.
    @inline(__always)
    func add(_ index: Int, _ amount: UInt64) {
        tcx_counter_add(counters + index, amount)
    }

    /// Reads counter `index`, from any thread.
    @inline(__always)
    func load(_ index: Int) -> UInt64 {
        tcx_counter_load(counters + index)
    }
}
