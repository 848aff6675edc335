import TestSupport
import Testing

@testable import TCPCrossover

@Suite struct SupportTests {
    @Test func timerHeap_givesDueEntriesInDeadlineOrder() {
        var heap = TimerHeap()
        var random = SeededRandom(seed: 42)
        let deadlines = (0..<500).map { _ in Int64.random(in: 0...10_000, using: &random) }
        for (index, deadline) in deadlines.enumerated() {
            heap.push(.init(deadline: deadline, slot: Int32(index), generation: 1))
        }
        #expect(heap.popDue(now: -1) == nil)
        var popped: [Int64] = []
        while let entry = heap.popDue(now: 5_000) { popped.append(entry.deadline) }
        #expect(popped == deadlines.filter { $0 <= 5_000 }.sorted())
        #expect(heap.earliest == deadlines.filter { $0 > 5_000 }.min())
    }

    @Test(arguments: [
        (UInt64(0), "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"), (999_999_999, "1.0 GB"),
    ])
    func formatBytes_usesDecimalUnits(bytes: UInt64, expected: String) {
        #expect(formatBytes(bytes) == expected)
    }

    @Test func errnoClasses_nameTheRightValues() {
        #expect(Errno.connectionReset.isDisconnect)
        #expect(Errno.brokenPipe.isDisconnect)
        #expect(!Errno.tooManyOpenFiles.isDisconnect)
        #expect(Errno.tooManyOpenFiles.isResourceExhaustion)
        #expect(Errno.wouldBlock.isTransient)
        #expect(Errno.connectionReset.isAcceptAgain)
        #expect(!Errno.invalidArgument.isAcceptAgain)
    }
}
