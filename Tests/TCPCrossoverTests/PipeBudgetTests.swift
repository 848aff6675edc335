import Glibc
import Testing

@testable import TCPCrossover

/// The process's pipe budget (`PipeBudget`) through a loop's resources, with real pipes: what a pipe borrows beyond
/// the starting size comes back when it goes back to the pool, and a pipe that the previous process handed over is
/// charged as it is adopted, so that giving it back leaves the budget as it was.
@Suite struct PipeBudgetTests {
    private static let size = 256 << 10

    /// Whether exactly `bytes` are left: that many can be taken, one more cannot (what was taken is given back).
    private func leaves(_ budget: PipeBudget, _ bytes: Int) -> Bool {
        let more = budget.take(bytes + 1)
        if more { budget.give(bytes + 1) }
        let exactly = budget.take(bytes)
        if exactly { budget.give(bytes) }
        return exactly && !more
    }

    @Test func aGrownPipe_givesBackWhatItBorrowed() {
        let budget = PipeBudget(bytes: Self.size, largestPipe: 1 << 20)
        let resources = LoopResources(
            copyChunk: 64 << 10, startingPipe: 16 << 10, largestPipe: 1 << 20, budget: budget)
        guard var pipe = resources.acquirePipe() else {
            Issue.record("no pipe")
            return
        }
        #expect(pipe.capacity == 16 << 10)
        pipe.capacity = resources.growPipe(pipe, to: Direction.firstPipe)
        #expect(pipe.capacity == Direction.firstPipe)
        #expect(leaves(budget, Self.size - (Direction.firstPipe - 16 << 10)))
        resources.releasePipe(pipe)
        #expect(leaves(budget, Self.size))
    }

    @Test func anAdoptedPipe_isCharged_andGivingItBackLeavesTheBudgetAsItWas() throws {
        let budget = PipeBudget(bytes: Self.size, largestPipe: 1 << 20)
        let resources = LoopResources(
            copyChunk: 64 << 10, startingPipe: 16 << 10, largestPipe: 1 << 20, budget: budget)
        // A pipe of 64 KiB with bytes in it, as the previous process hands one over.
        let ends = try Syscall.pipe()
        #expect(Syscall.setPipeCapacity(ends.write, 64 << 10) == 64 << 10)
        let bytes = [UInt8](repeating: 7, count: 100)
        #expect(bytes.withUnsafeBytes { Glibc.write(ends.write, $0.baseAddress, $0.count) } == 100)
        let pipe = resources.adoptPipe(ends)
        #expect(pipe.capacity == 64 << 10)
        #expect(leaves(budget, Self.size - (48 << 10)))
        var drained = [UInt8](repeating: 0, count: 100)
        #expect(drained.withUnsafeMutableBytes { Glibc.read(ends.read, $0.baseAddress, $0.count) } == 100)
        resources.releasePipe(pipe)
        #expect(leaves(budget, Self.size))
    }
}
