import Glibc
import Testing

@testable import TCPCrossover

/// The process's figures (`Statistics`): each event loop counts into its own tally, and a snapshot sums them, while
/// the loops count and after they have ended.
@Suite struct StatisticsTests {
    @Test func snapshot_sumsTheTalliesOfEveryLoop_whileTheyCount() throws {
        let statistics = Statistics()
        let tallies = (0..<3).map { _ in statistics.addTally() }
        let turns = 100_000
        // Each tally is added to by a thread of its own, as each loop adds to its own, while a reader takes
        // snapshots: no figure may go backwards between two of them.
        let threads = try tallies.enumerated().map { index, tally in
            try Syscall.startThread {
                for _ in 0..<turns {
                    tally.add(.bytesUp, UInt64(index + 1))
                    tally.add(.bytesDown, 2)
                }
                tally.add(.accepted, UInt64(index + 1))
            }
        }
        var last = statistics.snapshot()
        for _ in 0..<1000 {
            let figures = statistics.snapshot()
            #expect(figures.bytesUp >= last.bytesUp && figures.bytesDown >= last.bytesDown)
            last = figures
        }
        for thread in threads { Syscall.joinThread(thread) }
        let figures = statistics.snapshot()
        #expect(figures.bytesUp == UInt64(turns * (1 + 2 + 3)))
        #expect(figures.bytesDown == UInt64(turns * 2 * 3))
        #expect(figures.accepted == 1 + 2 + 3)
        #expect(figures.description.hasSuffix("6 accepted, 0 refused, 0 failed connects, 600.0 kB up, 600.0 kB down"))
    }

    @Test func tallies_eachHaveCacheLinesOfTheirOwn() {
        let statistics = Statistics()
        let first = statistics.addTally()
        let second = statistics.addTally()
        let lines = [first.address, second.address].map { $0 / CounterBlock.alignment }
        #expect(first.address % CounterBlock.alignment == 0 && second.address % CounterBlock.alignment == 0)
        #expect(lines[0] != lines[1])
    }
}
