import Synchronization

/// The pipe memory that the process's pipes may hold beyond their starting size, shared by its event loops: a pipe
/// grows (see `Direction`; a splicing direction's first pipe, `Direction.firstPipe`, is such a growth) only with a
/// share of it, and gives the share back when it shrinks or closes. So the splicing directions of clients that stop
/// reading can never pin more than this in total, and honest connections keep pipes of the starting size however
/// many of them there are.
///
/// An unprivileged process is also held by the kernel to fs.pipe-user-pages-soft (64 MiB by default) for all its
/// pipes, beyond which every new pipe of the user gets 2 pages and no pipe can grow: the budget is then half of that
/// limit at most, the other half left to pipes of the starting size. Its size is settled at the first growth, when
/// privileges have been dropped.
final class PipeBudget: Sendable {
    /// Bytes still available; `unset` until the first growth settles the size.
    private let available = Atomic<Int>(PipeBudget.unset)
    private let configured: Int?
    private let largestPipe: Int
    private static let unset = Int.min

    /// `bytes`: the budget, or nil for the default (64 of the largest pipes, within the unprivileged limit).
    init(bytes: Int?, largestPipe: Int) {
        configured = bytes
        self.largestPipe = largestPipe
    }

    /// The budget this process gets: the configured one, or 64 pipes of the largest size, and for an unprivileged
    /// process at most half of its pipe-user-pages-soft (the kernel's default where /proc/sys cannot be read).
    var size: Int {
        var size = configured ?? 64 * largestPipe
        if Syscall.isUnprivileged {
            let pages = Syscall.pipeUserPagesSoft() ?? 16384
            if pages > 0 { size = min(size, pages * Syscall.pageSize / 2) }
        }
        return size
    }

    /// Takes `bytes` from the budget; false, taking nothing, when fewer are left.
    func take(_ bytes: Int) -> Bool {
        var current = settled()
        while current >= bytes {
            let (exchanged, original) = available.compareExchange(
                expected: current, desired: current - bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Gives back what `take` or `charge` took.
    func give(_ bytes: Int) {
        available.add(bytes, ordering: .relaxed)
    }

    /// Takes `bytes` that are held already, however few are left (a pipe that came with bytes in it from the
    /// previous process): the budget may fall below zero, and no pipe grows until as much has been given back.
    func charge(_ bytes: Int) {
        _ = settled()
        available.subtract(bytes, ordering: .relaxed)
    }

    /// Bytes still available, the budget's size settled at the first call.
    private func settled() -> Int {
        let current = available.load(ordering: .relaxed)
        guard current == Self.unset else { return current }
        let (_, original) = available.compareExchange(expected: Self.unset, desired: size, ordering: .relaxed)
        return original == Self.unset ? available.load(ordering: .relaxed) : original
    }
}

/// What an event loop lends its connections: one shared receive buffer, and pools of pipes and of buffers for
/// directions that need them for a while. Nothing here is allocated per event; pipes and buffers are made when the
/// pool is empty and kept, up to a bound, when given back.
final class LoopResources {
    /// The shared buffer for a receive that is sent at once.
    let scratch: UnsafeMutableRawBufferPointer
    /// The size a pipe starts with: a direction's pipe grows from there towards `largestPipe` only while the pipe,
    /// not the destination, holds the direction back (see `Direction`).
    let startingPipe: Int
    /// The largest pipe size (`--bs`).
    let largestPipe: Int
    /// The process's budget for pipe capacity beyond `startingPipe`.
    let budget: PipeBudget
    private var idlePipes: [PipeHandle] = []
    private var idleBuffers: [UnsafeMutableRawBufferPointer] = []
    /// The size of the pooled buffers for held bytes: 16 KiB, or the receive's size when that is less.
    private let pooledBuffer: Int
    private let maximumIdle: Int
    /// Pipes handed out and not given back: none once every connection of the loop has ended (checked in debug
    /// builds).
    private(set) var pipesInUse = 0

    init(copyChunk: Int, startingPipe: Int, largestPipe: Int, budget: PipeBudget, maximumIdle: Int = 64) {
        scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: copyChunk, alignment: 64)
        pooledBuffer = min(copyChunk, 16 << 10)
        self.startingPipe = min(startingPipe, largestPipe)
        self.largestPipe = largestPipe
        self.budget = budget
        self.maximumIdle = maximumIdle
    }

    deinit {
        scratch.deallocate()
        for pipe in idlePipes { close(pipe) }
        for buffer in idleBuffers { buffer.deallocate() }
    }

    func acquirePipe() -> PipeHandle? {
        if let pipe = idlePipes.popLast() {
            pipesInUse += 1
            return pipe
        }
        do {
            let (readEnd, writeEnd) = try Syscall.pipe()
            // A new pipe has the kernel's default size (16 pages), or 2 pages for a user past its
            // pipe-user-pages-soft; it is set to the starting size, which the budget does not count.
            let capacity = Syscall.setPipeCapacity(writeEnd, startingPipe) ?? Syscall.pipeCapacity(writeEnd)
            pipesInUse += 1
            return PipeHandle(readEnd: readEnd, writeEnd: writeEnd, capacity: max(capacity, 4096))
        } catch {
            // Out of descriptors (or pipe memory): the direction copies instead of splicing.
            return nil
        }
    }

    func growPipe(_ pipe: PipeHandle, to bytes: Int) -> Int {
        let target = min(bytes, largestPipe)
        // Only capacity beyond the starting size counts against the budget.
        let charge = target - max(pipe.capacity, startingPipe)
        guard target > pipe.capacity, charge <= 0 || budget.take(charge) else { return pipe.capacity }
        guard let capacity = Syscall.setPipeCapacity(pipe.writeEnd, target) else {
            if charge > 0 { budget.give(charge) }
            return pipe.capacity
        }
        // The kernel rounds a size up to a power of two pages: the budget counts what the pipe has.
        if capacity != target { budget.give(target - capacity) }
        return capacity
    }

    /// Capacity beyond the starting size, which the budget lent.
    private func borrowed(_ pipe: PipeHandle) -> Int { max(0, pipe.capacity - startingPipe) }

    func releasePipe(_ pipe: PipeHandle) {
        pipesInUse -= 1
        var pipe = pipe
        if pipe.capacity > startingPipe {
            // An empty pipe can always shrink; the pool lends pipes of the starting size only.
            guard let capacity = Syscall.setPipeCapacity(pipe.writeEnd, startingPipe) else {
                close(pipe)
                return
            }
            budget.give(borrowed(pipe))
            pipe.capacity = capacity
        }
        if idlePipes.count < maximumIdle {
            idlePipes.append(pipe)
        } else {
            close(pipe)
        }
    }

    /// A pipe that the previous process handed over with bytes in it (see `EventLoop.adopt(_:)`): counted as in
    /// use, its capacity beyond the starting size charged to the budget, and given back as any other when its
    /// connection is done with it (before, giving back what was never taken grew the budget by that much for each
    /// such pipe).
    func adoptPipe(_ ends: (read: CInt, write: CInt)) -> PipeHandle {
        pipesInUse += 1
        let pipe = PipeHandle(
            readEnd: ends.read, writeEnd: ends.write, capacity: max(Syscall.pipeCapacity(ends.write), 4096))
        budget.charge(borrowed(pipe))
        return pipe
    }

    func discardPipe(_ pipe: PipeHandle) {
        pipesInUse -= 1
        close(pipe)
    }

    /// Closes the idle pipes, to give their descriptors back when the process runs short of them.
    func trimPipes() {
        for pipe in idlePipes { close(pipe) }
        idlePipes.removeAll(keepingCapacity: true)
    }

    /// A buffer for `count` held bytes: one of the pool's when they fit in `pooledBuffer`, as they usually do (the
    /// rest of a receive that the destination took most of), or one of their size otherwise, so that a connection
    /// whose reader stopped holds what it holds and not a whole receive's worth.
    func acquireBuffer(holding count: Int) -> UnsafeMutableRawBufferPointer {
        guard count <= pooledBuffer else { return .allocate(byteCount: count, alignment: 64) }
        return idleBuffers.popLast() ?? .allocate(byteCount: pooledBuffer, alignment: 64)
    }

    func releaseBuffer(_ buffer: UnsafeMutableRawBufferPointer) {
        if buffer.count == pooledBuffer && idleBuffers.count < maximumIdle {
            idleBuffers.append(buffer)
        } else {
            buffer.deallocate()
        }
    }

    /// Closes a pipe and gives back what the budget lent it.
    private func close(_ pipe: PipeHandle) {
        budget.give(borrowed(pipe))
        Syscall.close(pipe.readEnd)
        Syscall.close(pipe.writeEnd)
    }
}

/// `RelayIO` over a connection's two sockets and its loop's resources.
struct SocketIO: RelayIO {
    let client: CInt
    let server: CInt
    unowned(unsafe) let resources: LoopResources

    @inline(__always)
    private func fd(_ side: Side) -> CInt { side == .client ? client : server }

    @inline(__always)
    func receive(from side: Side, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> IOResult<Int> {
        try Syscall.receive(fd(side), into: buffer)
    }

    @inline(__always)
    func send(to side: Side, _ bytes: UnsafeRawBufferPointer, endFollows: Bool) throws(Errno) -> IOResult<Int> {
        try Syscall.send(fd(side), bytes, more: endFollows)
    }

    @inline(__always)
    func splice(from side: Side, into pipe: PipeHandle, count: Int) throws(Errno) -> IOResult<Int> {
        try Syscall.splice(from: fd(side), to: pipe.writeEnd, count: count)
    }

    @inline(__always)
    func splice(from pipe: PipeHandle, to side: Side, count: Int) throws(Errno) -> IOResult<Int> {
        try Syscall.splice(from: pipe.readEnd, to: fd(side), count: count)
    }

    func shutdownWrite(_ side: Side) throws(Errno) {
        try Syscall.shutdownWrite(fd(side))
    }

    func atUrgentMark(_ side: Side) throws(Errno) -> Bool {
        try Syscall.atUrgentMark(fd(side))
    }

    func sendUrgent(to side: Side, _ byte: UInt8) throws(Errno) -> IOResult<Int> {
        try Syscall.sendUrgent(fd(side), byte)
    }

    func unacknowledgedBytes(_ side: Side) -> Int {
        Syscall.unacknowledgedBytes(fd(side))
    }

    func acquirePipe() -> PipeHandle? { resources.acquirePipe() }
    func releasePipe(_ pipe: PipeHandle) { resources.releasePipe(pipe) }
    func growPipe(_ pipe: PipeHandle, to bytes: Int) -> Int { resources.growPipe(pipe, to: bytes) }
    var largestPipe: Int { resources.largestPipe }
    var startingPipe: Int { resources.startingPipe }
    func limitReceiveBuffer(_ side: Side, to bytes: Int) { Syscall.setReceiveBuffer(fd(side), bytes) }
    func limitUnsent(_ side: Side, to bytes: Int) { Syscall.setUnsentLimit(fd(side), bytes) }
    func discardPipe(_ pipe: PipeHandle) { resources.discardPipe(pipe) }
    func write(into pipe: PipeHandle, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard case .processed(let count) = try? Syscall.write(pipe.writeEnd, bytes) else { return 0 }
        return count
    }
    func acquireBuffer(holding count: Int) -> UnsafeMutableRawBufferPointer {
        resources.acquireBuffer(holding: count)
    }
    func releaseBuffer(_ buffer: UnsafeMutableRawBufferPointer) { resources.releaseBuffer(buffer) }
    var scratch: UnsafeMutableRawBufferPointer { resources.scratch }
}
