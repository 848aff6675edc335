/// What an event loop lends its connections: one shared receive buffer, and pools of pipes and of buffers for
/// directions that need them for a while. Nothing here is allocated per event; pipes and buffers are made when the
/// pool is empty and kept, up to a bound, when given back.
final class LoopResources {
    /// The shared buffer for a receive that is sent at once.
    let scratch: UnsafeMutableRawBufferPointer
    /// The pipe size asked for (`--bs`).
    let pipeSize: Int
    private var idlePipes: [PipeHandle] = []
    private var idleBuffers: [UnsafeMutableRawBufferPointer] = []
    private let maximumIdle: Int
    /// Pipes handed out and not given back: none once every connection of the loop has ended (checked in debug
    /// builds).
    private(set) var pipesInUse = 0

    init(copyChunk: Int, pipeSize: Int, maximumIdle: Int = 64) {
        scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: copyChunk, alignment: 64)
        self.pipeSize = pipeSize
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
            let capacity = Syscall.setPipeCapacity(writeEnd, pipeSize)
            pipesInUse += 1
            return PipeHandle(readEnd: readEnd, writeEnd: writeEnd, capacity: max(capacity, 4096))
        } catch {
            // Out of descriptors (or pipe memory): the direction copies instead of splicing.
            return nil
        }
    }

    func releasePipe(_ pipe: PipeHandle) {
        pipesInUse -= 1
        if idlePipes.count < maximumIdle {
            idlePipes.append(pipe)
        } else {
            close(pipe)
        }
    }

    /// A pipe that the previous process handed over with bytes in it (see `EventLoop.adopt(_:)`): counted as in
    /// use, and given back as any other when its connection is done with it.
    func adoptPipe(_ ends: (read: CInt, write: CInt)) -> PipeHandle {
        pipesInUse += 1
        return PipeHandle(
            readEnd: ends.read, writeEnd: ends.write, capacity: max(Syscall.pipeCapacity(ends.write), 4096))
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

    func acquireBuffer() -> UnsafeMutableRawBufferPointer {
        idleBuffers.popLast() ?? UnsafeMutableRawBufferPointer.allocate(byteCount: scratch.count, alignment: 64)
    }

    func releaseBuffer(_ buffer: UnsafeMutableRawBufferPointer) {
        if idleBuffers.count < maximumIdle {
            idleBuffers.append(buffer)
        } else {
            buffer.deallocate()
        }
    }

    private func close(_ pipe: PipeHandle) {
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
    func discardPipe(_ pipe: PipeHandle) { resources.discardPipe(pipe) }
    func write(into pipe: PipeHandle, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard case .processed(let count) = try? Syscall.write(pipe.writeEnd, bytes) else { return 0 }
        return count
    }
    func acquireBuffer() -> UnsafeMutableRawBufferPointer { resources.acquireBuffer() }
    func releaseBuffer(_ buffer: UnsafeMutableRawBufferPointer) { resources.releaseBuffer(buffer) }
    var scratch: UnsafeMutableRawBufferPointer { resources.scratch }
}
