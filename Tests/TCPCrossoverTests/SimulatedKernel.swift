import Glibc
import TCPCrossover
import TestSupport

/// A simulated kernel for the relay's state machine: two sockets with finite buffers, pipes whose slots can fill
/// before their byte capacity does (as with splice from TCP), calls that move random amounts, and injected resets.
/// It implements `RelayIO`, so `RelayState` runs against it exactly as against real sockets.
final class SimulatedKernel {
    /// One socket as the relay sees it.
    struct Socket {
        /// Bytes the peer sent that the relay has not received.
        var incoming: [UInt8] = []
        var incomingOffset = 0
        /// The peer sent FIN after `incoming`.
        var peerEnded = false
        /// Bytes the relay sent that the peer has not read yet, up to `window`.
        var outgoing: [UInt8] = []
        var outgoingOffset = 0
        var window = 64 * 1024
        /// Everything the peer has read.
        var delivered: [UInt8] = []
        /// The relay shut down its write side (FIN to the peer).
        var shutdownCount = 0
        /// The relay sent bytes as the last before its FIN (MSG_MORE): TCP holds them back until the shutdown, which
        /// must come next, with nothing sent in between.
        var heldForEnd = false
        /// Sends that said the end follows.
        var sendsBeforeEnd = 0
        /// The socket failed (a reset, a timeout): TCP's CLOSE state. As in Linux, what was received before stays
        /// readable, then a receive returns 0 if the peer's FIN came before the failure, else the pending error, or
        /// 0 again once another call took that error away; sends fail.
        var broken = false
        /// The pending error (SO_ERROR): taken away by the first call that reports it.
        var pendingError: Errno?
        /// The relay closed the socket (`closeFinishedConnection`).
        var closed = false
        /// recv and splice calls that read from this socket.
        var receives = 0
        /// Index in `incoming` of an urgent byte, sent with MSG_OOB and read in line (SO_OOBINLINE): as in TCP, a
        /// receive that has read anything stops short before it, and splice stops there for good.
        var urgentMark: Int?
        /// Positions in `received` of the bytes the relay sent as urgent data.
        var urgentSent: [Int] = []
        /// The receive buffer the relay gave this socket (SO_RCVBUF), nil while the kernel's autotuning has it, and
        /// how many times it was set.
        var receiveBuffer: Int?
        var receiveBufferChanges = 0
        /// The limit of unsent bytes the relay gave this socket (TCP_NOTSENT_LOWAT), nil while it has none.
        var unsentLimit: Int?

        /// FINs the peer got: from shutdown, or from the close of a socket that had not been shut down.
        var finsReceived: Int { shutdownCount + (closed && shutdownCount == 0 ? 1 : 0) }

        var available: Int { incoming.count - incomingOffset }

        /// A receive from a socket whose incoming bytes are all read: 0 for the peer's FIN (checked first, as Linux
        /// does), then the pending error, taken away, then 0 for a failed socket, else nothing yet.
        mutating func receiveAtTheEnd(_ result: inout IOResult<Int>) -> Errno? {
            if peerEnded {
                result = .processed(0)
            } else if let error = pendingError {
                pendingError = nil
                return error
            } else if broken {
                result = .processed(0)
            }
            return nil
        }

        /// A send to a failed socket: the pending error, taken away, or EPIPE.
        mutating func sendFailure() -> Errno {
            defer { pendingError = nil }
            return pendingError ?? .brokenPipe
        }
        var unread: Int { outgoing.count - outgoingOffset }
        /// Everything the relay sent to this peer, read or not.
        var received: [UInt8] { delivered + outgoing[outgoingOffset...] }
    }

    struct Pipe {
        var bytes: [UInt8] = []
        var offset = 0
        var count: Int { bytes.count - offset }
        var slotsUsed = 0
        var slots: Int
        var capacity: Int
    }

    var random: SeededRandom
    var client = Socket()
    var server = Socket()
    var pipes: [CInt: Pipe] = [:]
    var nextPipe: CInt = 100
    var pipesInUse = 0
    var buffersInUse = 0
    /// The bytes of the held buffers handed out and not given back.
    var bufferBytesInUse = 0
    /// Pipes handed out so far.
    var pipesAcquired = 0
    /// The capacity of a new pipe, and the largest a pipe may grow to (`--bs`).
    var pipeCapacity: Int
    var largestPipeCapacity: Int
    /// Capacity beyond `pipeCapacity` that the process's pipes may still take (the process's pipe budget).
    var pipeBudget = Int.max
    /// Pipe growths asked for and granted.
    var pipeGrowths = 0
    /// Splice from a socket fails with EINVAL (a socket type without splice support).
    var spliceUnsupported = false
    /// acquirePipe returns nil (out of descriptors).
    var pipesUnavailable = false
    let scratchBuffer: UnsafeMutableRawBufferPointer
    var calls = 0

    init(seed: UInt64, pipeCapacity: Int = 64 * 1024, largestPipeCapacity: Int? = nil, copyChunk: Int = 16 * 1024) {
        random = SeededRandom(seed: seed)
        self.pipeCapacity = pipeCapacity
        self.largestPipeCapacity = max(pipeCapacity, largestPipeCapacity ?? pipeCapacity)
        scratchBuffer = .allocate(byteCount: copyChunk, alignment: 16)
    }

    deinit { scratchBuffer.deallocate() }

    func socket(_ side: Side) -> Socket { side == .client ? client : server }

    /// A pipe that leaves the relay gives back what it took of the budget.
    func budgetReturn(_ pipe: PipeHandle) {
        let capacity = pipes[pipe.readEnd]!.capacity
        if capacity > pipeCapacity { pipeBudget += capacity - pipeCapacity }
    }

    /// Pipe capacity held by the relay's directions now.
    var pipeCapacityInUse: Int { pipes.values.reduce(0) { $0 + $1.capacity } }

    func modify(_ side: Side, _ body: (inout Socket) -> Void) {
        if side == .client { body(&client) } else { body(&server) }
    }

    /// A random amount from 1 to `limit`, often the whole.
    func portion(_ limit: Int) -> Int {
        guard limit > 1 else { return limit }
        return Bool.random(using: &random) ? limit : Int.random(in: 1...limit, using: &random)
    }

    // MARK: what the peers do

    func peerSends(_ side: Side, _ bytes: [UInt8], readiness: inout Readiness) {
        modify(side) { $0.incoming += bytes }
        readiness[side].readable = true
    }

    /// The peer sends `bytes`, the one at `urgentIndex` with MSG_OOB: epoll reports EPOLLIN and EPOLLPRI.
    func peerSendsUrgent(_ side: Side, _ bytes: [UInt8], urgentIndex: Int, readiness: inout Readiness) {
        modify(side) { socket in
            socket.urgentMark = socket.incoming.count + urgentIndex
            socket.incoming += bytes
        }
        readiness[side].readable = true
        readiness[side].urgent = true
    }

    /// The peer sends FIN: epoll reports EPOLLIN and EPOLLRDHUP, without an error.
    func peerEnds(_ side: Side, readiness: inout Readiness) {
        modify(side) { $0.peerEnded = true }
        readiness[side].readable = true
        readiness[side].hungUp = true
        readiness[side].endReported = true
    }

    /// The peer resets: epoll reports EPOLLERR and EPOLLHUP. As Linux does, a reset after the peer's FIN leaves EPIPE
    /// (TCP's CLOSE_WAIT state), any other ECONNRESET.
    func peerResets(_ side: Side, readiness: inout Readiness) {
        peerFails(side, socket(side).peerEnded ? .brokenPipe : .connectionReset, readiness: &readiness)
    }

    /// The connection fails with `errno` (a reset; a timeout when the peer vanished): epoll reports EPOLLERR and
    /// EPOLLHUP. The peer reads nothing more: what it had not read is lost.
    func peerFails(_ side: Side, _ errno: Errno, readiness: inout Readiness) {
        modify(side) { socket in
            socket.broken = true
            socket.pendingError = errno
            socket.heldForEnd = false
        }
        readiness[side].readable = true
        readiness[side].writable = true
        readiness[side].hungUp = true
        readiness[side].failed = true
    }

    /// What the event loop does when the relay says `.finished`: close(2) on both sockets, which sends a FIN where
    /// none was sent, after any bytes held back for it. close(2) resets instead when the socket has incoming bytes
    /// that were never read: the relay must have read each side's stream to its end before it says finished.
    func closeFinishedConnection() {
        for side in [Side.client, .server] {
            modify(side) { socket in
                precondition(socket.peerEnded && socket.available == 0, "closed with incoming bytes unread: a reset")
                socket.closed = true
                socket.heldForEnd = false
            }
        }
    }

    /// getsockopt(2) SO_ERROR, as the event loop calls it: the pending error, taken away.
    func takePendingError(_ side: Side) -> Errno? {
        var error: Errno?
        modify(side) { socket in
            error = socket.pendingError
            socket.pendingError = nil
        }
        return error
    }

    /// The peer reads up to `count` bytes of what the relay sent (a failed connection's peer reads nothing more).
    func peerReads(_ side: Side, upTo count: Int, readiness: inout Readiness) {
        modify(side) { socket in
            guard !socket.broken else { return }
            let taken = min(count, socket.unread)
            guard taken > 0 else { return }
            socket.delivered += socket.outgoing[socket.outgoingOffset..<(socket.outgoingOffset + taken)]
            socket.outgoingOffset += taken
            if socket.outgoingOffset == socket.outgoing.count {
                socket.outgoing.removeAll(keepingCapacity: true)
                socket.outgoingOffset = 0
            }
        }
        readiness[side].writable = true
    }
}

extension SimulatedKernel {
    /// `RelayIO` for one turn; a struct, as the real one is, forwarding to the kernel.
    struct IO: RelayIO {
        let kernel: SimulatedKernel

        func receive(from side: Side, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> IOResult<Int> {
            kernel.calls += 1
            var result = IOResult<Int>.wouldBlock
            var failure: Errno?
            kernel.modify(side) { socket in
                socket.receives += 1
                if socket.available == 0 {
                    failure = socket.receiveAtTheEnd(&result)
                    return
                }
                // As TCP does, recv takes all that is queued, up to the buffer's length or an urgent mark.
                var count = min(buffer.count, socket.available)
                if let mark = socket.urgentMark, mark > socket.incomingOffset {
                    count = min(count, mark - socket.incomingOffset)
                }
                for index in 0..<count { buffer[index] = socket.incoming[socket.incomingOffset + index] }
                socket.incomingOffset += count
                if let mark = socket.urgentMark, socket.incomingOffset > mark { socket.urgentMark = nil }
                result = .processed(count)
            }
            if let failure { throw failure }
            return result
        }

        func send(to side: Side, _ bytes: UnsafeRawBufferPointer, endFollows: Bool) throws(Errno) -> IOResult<Int> {
            kernel.calls += 1
            var result = IOResult<Int>.wouldBlock
            var failure: Errno?
            kernel.modify(side) { socket in
                if socket.broken {
                    failure = socket.sendFailure()
                    return
                }
                precondition(socket.shutdownCount == 0, "send after shutdown")
                precondition(!socket.heldForEnd || endFollows, "bytes sent after the ones said to be the last")
                // As TCP does, send takes all that fits: a short count means the socket is full.
                let room = socket.window - socket.unread
                guard room > 0 else { return }
                let count = min(room, bytes.count)
                socket.outgoing += bytes[0..<count]
                if endFollows {
                    socket.heldForEnd = true
                    socket.sendsBeforeEnd += 1
                }
                result = .processed(count)
            }
            if let failure { throw failure }
            return result
        }

        func atUrgentMark(_ side: Side) throws(Errno) -> Bool {
            kernel.calls += 1
            let socket = kernel.socket(side)
            return socket.urgentMark == socket.incomingOffset && socket.available > 0
        }

        func sendUrgent(to side: Side, _ byte: UInt8) throws(Errno) -> IOResult<Int> {
            let position = kernel.socket(side).received.count
            var result = IOResult<Int>.wouldBlock
            var failure: Errno?
            [byte].withUnsafeBytes { one in
                do throws(Errno) { result = try send(to: side, one, endFollows: false) } catch { failure = error }
            }
            if let failure { throw failure }
            if case .processed = result { kernel.modify(side) { $0.urgentSent.append(position) } }
            return result
        }

        func splice(from side: Side, into pipe: PipeHandle, count: Int) throws(Errno) -> IOResult<Int> {
            kernel.calls += 1
            if kernel.spliceUnsupported { throw Errno.invalidArgument }
            var simulated = kernel.pipes[pipe.readEnd]!
            let freeSlots = simulated.slots - simulated.slotsUsed
            var result = IOResult<Int>.wouldBlock
            var failure: Errno?
            kernel.modify(side) { socket in
                socket.receives += 1
                if socket.available == 0 {
                    failure = socket.receiveAtTheEnd(&result)
                    return
                }
                // A pipe with every slot taken takes nothing, even below its byte capacity.
                guard freeSlots > 0 else { return }
                var limit = min(count, socket.available, simulated.capacity - simulated.count)
                if let mark = socket.urgentMark {
                    // TCP's splice stops at an urgent mark and never passes it: EAGAIN, however much is queued.
                    limit = min(limit, mark - socket.incomingOffset)
                }
                guard limit > 0 else { return }
                let moved = kernel.portion(limit)
                // Each segment spliced may take a slot of its own, however small.
                let slots = min(
                    freeSlots,
                    Int.random(
                        in: ((moved + 4095) / 4096)...max(1, (moved + 511) / 512),
                        using: &kernel.random))
                let fitting = min(moved, slots * 4096)
                simulated.bytes += socket.incoming[socket.incomingOffset..<(socket.incomingOffset + fitting)]
                simulated.slotsUsed += slots
                socket.incomingOffset += fitting
                result = .processed(fitting)
            }
            if let failure { throw failure }
            kernel.pipes[pipe.readEnd] = simulated
            return result
        }

        func splice(from pipe: PipeHandle, to side: Side, count: Int) throws(Errno) -> IOResult<Int> {
            kernel.calls += 1
            var simulated = kernel.pipes[pipe.readEnd]!
            precondition(count <= simulated.count, "splice of more than the pipe holds")
            var result = IOResult<Int>.wouldBlock
            var failure: Errno?
            kernel.modify(side) { socket in
                if socket.broken {
                    failure = socket.sendFailure()
                    return
                }
                precondition(socket.shutdownCount == 0, "splice after shutdown")
                precondition(!socket.heldForEnd, "bytes spliced after the ones said to be the last")
                let room = socket.window - socket.unread
                guard room > 0, simulated.count > 0 else { return }
                let moved = kernel.portion(min(room, count))
                socket.outgoing += simulated.bytes[simulated.offset..<(simulated.offset + moved)]
                simulated.offset += moved
                if simulated.count == 0 {
                    simulated.bytes.removeAll(keepingCapacity: true)
                    simulated.offset = 0
                    simulated.slotsUsed = 0
                } else {
                    simulated.slotsUsed = min(simulated.slotsUsed, (simulated.count + 511) / 512)
                }
                result = .processed(moved)
            }
            if let failure { throw failure }
            kernel.pipes[pipe.readEnd] = simulated
            return result
        }

        func shutdownWrite(_ side: Side) throws(Errno) {
            kernel.calls += 1
            var failure: Errno?
            kernel.modify(side) { socket in
                if socket.broken {
                    // shutdown(2) on a closed TCP socket leaves the pending error alone.
                    failure = Errno(ENOTCONN)
                } else {
                    socket.shutdownCount += 1
                    socket.heldForEnd = false
                }
            }
            if let failure { throw failure }
        }

        /// SIOCOUTQ: in this model a peer acknowledges what it reads.
        func unacknowledgedBytes(_ side: Side) -> Int {
            kernel.socket(side).unread
        }

        func acquirePipe() -> PipeHandle? {
            guard !kernel.pipesUnavailable else { return nil }
            let fd = kernel.nextPipe
            kernel.nextPipe += 2
            let capacity = kernel.pipeCapacity
            kernel.pipes[fd] = Pipe(slots: max(2, capacity / 4096), capacity: capacity)
            kernel.pipesInUse += 1
            kernel.pipesAcquired += 1
            return PipeHandle(readEnd: fd, writeEnd: fd + 1, capacity: capacity)
        }

        func releasePipe(_ pipe: PipeHandle) {
            precondition(kernel.pipes[pipe.readEnd]!.count == 0, "a pipe with bytes went back to the pool")
            kernel.budgetReturn(pipe)
            kernel.pipes[pipe.readEnd] = nil
            kernel.pipesInUse -= 1
        }

        func discardPipe(_ pipe: PipeHandle) {
            kernel.budgetReturn(pipe)
            kernel.pipes[pipe.readEnd] = nil
            kernel.pipesInUse -= 1
        }

        func growPipe(_ pipe: PipeHandle, to bytes: Int) -> Int {
            kernel.calls += 1
            var simulated = kernel.pipes[pipe.readEnd]!
            precondition(simulated.capacity == pipe.capacity, "the direction's pipe capacity is not the kernel's")
            let target = min(bytes, kernel.largestPipeCapacity)
            let charge = target - max(simulated.capacity, kernel.pipeCapacity)
            guard target > simulated.capacity, charge <= kernel.pipeBudget else { return simulated.capacity }
            kernel.pipeBudget -= max(0, charge)
            kernel.pipeGrowths += 1
            simulated.capacity = target
            simulated.slots = max(2, (target + 4095) / 4096)
            kernel.pipes[pipe.readEnd] = simulated
            return target
        }

        var largestPipe: Int { kernel.largestPipeCapacity }
        var startingPipe: Int { kernel.pipeCapacity }

        func limitUnsent(_ side: Side, to bytes: Int) {
            kernel.calls += 1
            kernel.modify(side) { $0.unsentLimit = bytes }
        }

        func limitReceiveBuffer(_ side: Side, to bytes: Int) {
            kernel.calls += 1
            kernel.modify(side) { socket in
                socket.receiveBuffer = bytes
                socket.receiveBufferChanges += 1
            }
        }

        /// A write fills the pipe's slots a page at a time.
        func write(into pipe: PipeHandle, _ bytes: UnsafeRawBufferPointer) -> Int {
            kernel.calls += 1
            var simulated = kernel.pipes[pipe.readEnd]!
            let fitting = min(
                bytes.count, simulated.capacity - simulated.count, (simulated.slots - simulated.slotsUsed) * 4096)
            guard fitting > 0 else { return 0 }
            simulated.bytes += bytes[0..<fitting]
            simulated.slotsUsed += (fitting + 4095) / 4096
            kernel.pipes[pipe.readEnd] = simulated
            return fitting
        }

        func acquireBuffer(holding count: Int) -> UnsafeMutableRawBufferPointer {
            precondition(count > 0 && count <= kernel.scratchBuffer.count, "a held buffer is for one receive's bytes")
            kernel.buffersInUse += 1
            kernel.bufferBytesInUse += count
            return .allocate(byteCount: count, alignment: 16)
        }

        func releaseBuffer(_ buffer: UnsafeMutableRawBufferPointer) {
            kernel.buffersInUse -= 1
            kernel.bufferBytesInUse -= buffer.count
            buffer.deallocate()
        }

        var scratch: UnsafeMutableRawBufferPointer { kernel.scratchBuffer }
    }
}
