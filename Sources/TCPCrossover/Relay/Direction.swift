/// Readiness of a connection's two sockets, as edge-triggered epoll last reported it and the last calls left it.
///
/// A flag is set by an epoll event and cleared when a call on that socket returns EAGAIN; with edge triggering,
/// no new event comes until then.
public struct Readiness: Equatable, Sendable {
    public var client = SocketReadiness()
    public var server = SocketReadiness()

    public init() {}

    public subscript(side: Side) -> SocketReadiness {
        @inline(__always) get { side == .client ? client : server }
        @inline(__always) set {
            if side == .client { client = newValue } else { server = newValue }
        }
    }
}

/// What epoll reported for one socket of a connection, and what the calls since left of it.
public struct SocketReadiness: Equatable, Sendable {
    public var readable = false
    public var writable = false
    /// epoll reported the peer's end of stream (EPOLLRDHUP) or an error: reading must go on until recv says so.
    public var hungUp = false
    /// epoll reported an error (EPOLLERR: a reset, a timeout): a hang-up may be that error, not a FIN.
    public var failed = false
    /// epoll reported the peer's end of stream without an error, so it was a FIN (a reset or a timeout is reported
    /// with EPOLLERR along with its hang-up): the peer ended its stream cleanly, whatever happens to the socket later.
    public var endReported = false
    /// epoll reported urgent data (EPOLLPRI) once: recv(2) stops short at an urgent mark with more queued behind
    /// it, and splice(2) stops there for good, so neither a short receive nor a splice can be trusted to have
    /// emptied that socket any more.
    public var urgent = false
}

/// Bytes received in copy mode that the destination has not taken yet.
struct HeldBytes {
    let buffer: UnsafeMutableRawBufferPointer
    var start: Int
    var end: Int

    var isEmpty: Bool { start == end }

    /// What `Direction.heldBytes` is while nothing is held.
    static var none: HeldBytes {
        HeldBytes(buffer: UnsafeMutableRawBufferPointer(start: nil, count: 0), start: 0, end: 0)
    }
}

/// How one direction of a relay ended its turn.
public enum PumpOutcome: Equatable, Sendable {
    /// Nothing more can be done until a socket becomes ready again.
    case idle
    /// There is more to do, but the turn's budget is spent: come back after the other connections had theirs.
    case moreWork
    /// A call on `side` failed: the connection is over (a reset, or an error such as a timeout).
    case failed(Side, Errno)
}

/// One direction of a relayed connection (`clientToServer` or `serverToClient`): moves bytes from `source` to
/// `destination` and passes the end of the stream on.
///
/// Small exchanges are copied: recv(2) into the loop's shared buffer, then send(2) at once, so an idle or
/// request/response connection holds no buffer and no pipe. When a receive reaches `bulkReceive` (bulk data) or the
/// destination cannot keep up, the direction switches to splice(2) through a pipe, which moves bytes without
/// copying them; when the source goes quiet with the pipe empty, the pipe goes back to the pool.
///
/// What a splicing direction holds is bounded by what its flow has earned, so that a destination that stops reading (a
/// client that never reads what the server sends) pins little. A flow starts having earned the starting pipe size; its
/// pipe is `firstPipe` when the process's budget lends the difference, the starting size when not. A source on this
/// machine (`boundsSourceBuffer`) has its receive buffer (SO_RCVBUF) limited to `receiveBuffer(forPipe:)` of the earned
/// size from the moment the direction starts splicing, so that the kernel's autotuning does not grow it to tcp_rmem's
/// maximum and the server's data waits in the server's send buffer, not in the relay's. A source elsewhere keeps
/// autotuning: over a long round trip the window, not the pipe, sets the pace, and a limited window would slow it for
/// good. The destination, for its part, takes only up to `unsentPerPipe` times the earned size beyond what is in flight
/// (TCP_NOTSENT_LOWAT), rather than all its send buffer's autotuning allows (tcp_wmem's maximum): a reader that stops
/// leaves little unsent in the relay's socket. The earned size (and the pipe, once that is the smaller) doubles each
/// time the pipe, holding what was earned, has delivered `growthSpan` times that to the destination within one
/// splicing episode (the count starts again when the direction starts splicing): a destination that stops reading
/// stops that count, one that takes only its socket buffers' worth before it stops leaves the flow at its start, and
/// so does one that reads many short responses, each its own episode, and then stops. While a direction still
/// copies, a receive of `sizeableReceive` or more gives the destination the unsent limit of a starting pipe, and the
/// rest of a receive that the destination did not take bounds a local source's receive buffer as a starting pipe
/// would: a reader that stops before the direction splices is held to the same bounds. A direction that copies for
/// good (`--splice no`, urgent data) gives a local source that receive buffer at its first bulk receive, where it
/// would have started splicing.
public struct Direction {
    // Stored properties in the order a turn reads them: first what tells whether the direction has anything to do
    // (`hasWork`: the flags, whether bytes are held, the pipe's count) and what a copy updates, in the first 32 bytes;
    // then the held bytes and the pipe themselves, and the figures of splicing and of failures. With thousands of
    // connections a turn finds its connection out of the cache: the first direction's first bytes follow the relay's
    // readiness, and a direction costs a turn one cache line, not two or three (callgrind's cache simulation).

    public let source: Side
    public let destination: Side
    /// The source sent its end of stream (recv returned 0).
    public private(set) var sourceEnded = false
    /// The end of stream was passed on: shutdown(SHUT_WR) on the destination, or, when it was the connection's
    /// last event, left to the close of the sockets (`pump`'s `closeFollowsEnd`).
    public private(set) var finished = false
    /// The destination's socket failed after the destination had ended its own stream (`RelayState`): nothing more
    /// can reach it. What the direction held was dropped, and what the source still sends is read and dropped, so
    /// that the source's peer is not held up in its writes while it reads the other direction to its end.
    public private(set) var abandoned = false
    /// Copy for good: splice(2) refused this source with EINVAL, or the source sent urgent data, which splice
    /// does not pass.
    private(set) var spliceUnsupported = false
    /// Copy mode saw bulk traffic: splice once the held bytes are out.
    private var wantsSplice = false
    /// The pipe filled up (it holds what the flow has earned, or its slots were all taken) since it was last empty.
    private var pipeFilled = false
    /// The source is on this machine (a loopback address or the machine's own): its receive buffer follows the
    /// earned pipe capacity.
    public var boundsSourceBuffer = false
    /// `heldBytes` holds bytes (see `held`).
    private var holding = false
    /// `pipeHandle` is the direction's pipe (see `pipe`).
    private var splicing = false
    /// An urgent byte received and not yet sent: it goes out alone, with MSG_OOB, before anything after it.
    private var urgentByte: UInt8?
    /// Bytes in the pipe, spliced in and not yet out.
    private(set) var pipeBytes = 0
    /// Bytes delivered to the destination.
    public private(set) var bytes: UInt64 = 0
    /// What `held` is while `holding`, and `pipe` while `splicing`; stale otherwise. Stored apart from their
    /// presence, so that a turn that holds nothing and copies does not read them.
    private var heldBytes = HeldBytes.none
    private var pipeHandle = PipeHandle(readEnd: -1, writeEnd: -1, capacity: 0)
    /// Bytes received in copy mode whose send failed: gone with the destination, and counted lost if it is abandoned.
    private var unsentAtFailure = 0
    /// Bytes spliced in since the source was last found empty: a small figure means the source went quiet.
    private var inflowSinceEmpty = 0
    /// Bytes of a header put before the source's (`hold`) still to be sent: they are not counted as relayed.
    private var headerBytesLeft = 0
    /// Bytes that the destination cannot have taken: held by the relay or unacknowledged by the destination when it
    /// failed, and read from the source afterwards.
    public private(set) var lostBytes: UInt64 = 0
    /// Bytes delivered from a pipe that had filled up, since the last growth or the start of this splicing episode.
    private var deliveredThroughFullPipe = 0
    /// The pipe capacity the flow has earned (0 before the first splice): the pipe grows to it within the process's
    /// budget, and the destination's unsent limit and a local source's receive buffer follow it.
    public private(set) var earnedPipeCapacity = 0
    /// The receive buffer the source was given (SO_RCVBUF), 0 while the kernel's autotuning has it.
    public private(set) var receiveBufferLimit = 0
    /// The limit of unsent bytes given to the destination (TCP_NOTSENT_LOWAT), 0 before the first splice.
    public private(set) var unsentLimit = 0

    /// The pipe while the direction splices; nil while it copies.
    private(set) var pipe: PipeHandle? {
        @inline(__always) get { splicing ? pipeHandle : nil }
        @inline(__always) set {
            splicing = newValue != nil
            if let newValue { pipeHandle = newValue }
        }
    }

    /// Copy mode: bytes the destination did not take at once.
    private var held: HeldBytes? {
        @inline(__always) get { holding ? heldBytes : nil }
        @inline(__always) set {
            holding = newValue != nil
            if let newValue { heldBytes = newValue }
        }
    }

    /// A flow whose pipe filled up earns twice what it had earned (the pipe, the source's receive buffer and the
    /// destination's unsent limit follow) after delivering this many times what it had earned: from 16 KiB to 1 MiB
    /// after some 64 MiB, a small part of a bulk transfer, while a client that stops reading has usually taken no more
    /// than its socket buffers (1 to 3 MiB over loopback) and leaves its flow at 16 or 32 KiB. A destination that
    /// keeps saying it is full (a slow reader, or the machine short of TCP memory) does not stop the growth: it still
    /// drains the pipe, and a fresh connection must reach its speed under load too.
    public static let growthSpan = 64
    /// The pipe a direction splices through from its start, while it has earned less: 64 KiB, the kernel's default
    /// pipe and what HAProxy and systemd-socket-proxyd splice through, taken from the budget beyond the starting size
    /// (a direction that finds the budget spent keeps the starting pipe). A 1 MiB response on a new connection, which
    /// never earns a growth, went through a 16 KiB pipe in 64 splices each way; through 64 KiB in 16, for a fifth
    /// less of the relay's CPU per response (Benchmarks/README.md). The limits that bound a reader that stops (the
    /// unsent limit, a local source's receive buffer) still follow what the flow has earned, so such a reader pins
    /// at most the difference more, 48 KiB, within the budget.
    public static let firstPipe = 64 << 10
    /// The source's receive buffer, in earned pipe capacities (the kernel doubles the figure for its bookkeeping),
    /// and no less than `smallestReceiveBuffer`: the pipe is the relay's buffer, and the receive buffer only has to
    /// keep it fed from a server on this machine, a round trip of microseconds. More lets the server queue in the relay
    /// what its own send buffer would hold, and once the machine is past tcp_mem's pressure threshold, a socket that
    /// holds more than its share (tcp_mem's hard limit over the number of TCP sockets) has arriving data dropped: with
    /// 4 times a 1 MiB pipe (8 MiB for the kernel), an honest download beside 500 clients that stopped reading had
    /// hundreds of drops and retransmissions from its server (TCPRcvQDrop), where HAProxy's autotuned 0.5 MiB had none.
    public static let receiveBufferPerPipe = 1
    /// The least receive buffer a splicing direction gives a source on this machine: tcp_rmem's default (128 KiB,
    /// asked for as 64 KiB), what a fresh connection has.
    public static let smallestReceiveBuffer = 64 << 10
    /// The receive buffer (SO_RCVBUF) of a source on this machine whose pipe has earned `capacity`.
    public static func receiveBuffer(forPipe capacity: Int) -> Int {
        max(smallestReceiveBuffer, receiveBufferPerPipe * capacity)
    }
    /// What may wait unsent in the destination's socket, in earned pipe capacities: 64 KiB for a 16 KiB pipe, 4 MiB
    /// (tcp_wmem's usual maximum, so no limit) for 1 MiB.
    public static let unsentPerPipe = 4
    /// A copy-mode receive of at least this many bytes is bulk data: the direction splices once they are out. Half
    /// the receive (64 KiB), so that one loopback segment (65,483 bytes) from a server that sends without pause
    /// starts splicing at once, while a response of up to 32 KiB goes through in one recv(2) and one send(2) and
    /// leaves the direction copying.
    public static let bulkReceive = 32 << 10
    /// A copy-mode receive of at least this many bytes is more than a small exchange (a request, a short response,
    /// a line of a mail dialogue), and gives the destination its unsent limit (`unsentPerPipe` starting pipes) while
    /// the direction still copies: the receive's size (64 KiB) lets a response of up to a loopback segment through in
    /// one call, and without the limit a reader that stops would leave all its socket's send buffer takes (up to
    /// tcp_wmem's maximum, 4 MiB) in the relay's socket.
    public static let sizeableReceive = 16 << 10

    public init(from source: Side, to destination: Side) {
        self.source = source
        self.destination = destination
    }

    /// What a direction is when it holds no bytes outside its pipe: all that a new process needs to go on with it
    /// after a hand-over (see `RelayState.Snapshot`), beside the pipe itself when it holds bytes, which is handed
    /// over as descriptors. An empty pipe and the wish to splice are not part of it: a restored direction without
    /// bytes in a pipe starts by copying, as a new one does, and splices again once the traffic asks for it.
    public struct Snapshot: Equatable, Sendable {
        /// Bytes delivered so far.
        public var bytes: UInt64
        public var sourceEnded: Bool
        /// The end of stream was passed on; implies `sourceEnded`.
        public var finished: Bool
        /// splice(2) is out of the question for this source (see `spliceUnsupported`).
        public var copiesOnly: Bool
        /// Bytes in the pipe, received and not yet delivered: the pipe goes with the snapshot.
        public var pipeBytes: Int

        public init(bytes: UInt64, sourceEnded: Bool, finished: Bool, copiesOnly: Bool, pipeBytes: Int = 0) {
            self.bytes = bytes
            self.sourceEnded = sourceEnded || finished
            // The end is passed on only once the pipe is empty.
            self.finished = finished && pipeBytes == 0
            self.copiesOnly = copiesOnly
            self.pipeBytes = max(0, pipeBytes)
        }
    }

    /// The direction's snapshot; nil while it holds bytes outside its pipe (in a buffer, an urgent byte, a header
    /// still to send) or has been abandoned: such a direction cannot be described by figures and a pipe alone.
    public var snapshot: Snapshot? {
        guard held == nil, urgentByte == nil, !abandoned, headerBytesLeft == 0, unsentAtFailure == 0 else {
            return nil
        }
        return Snapshot(
            bytes: bytes, sourceEnded: sourceEnded, finished: finished, copiesOnly: spliceUnsupported,
            pipeBytes: pipeBytes)
    }

    /// A direction that goes on from `snapshot`; `pipe` holds its `pipeBytes` when there are any, and is nil
    /// otherwise.
    public init(from source: Side, to destination: Side, restoring snapshot: Snapshot, pipe: PipeHandle? = nil) {
        precondition((snapshot.pipeBytes > 0) == (pipe != nil), "a pipe goes with the bytes in it, and only then")
        self.init(from: source, to: destination)
        bytes = snapshot.bytes
        sourceEnded = snapshot.sourceEnded
        finished = snapshot.finished
        spliceUnsupported = snapshot.copiesOnly
        self.pipe = pipe
        pipeBytes = snapshot.pipeBytes
    }

    /// For a hand-over: moves the bytes held in a copy buffer (received, not yet taken by the destination) into a
    /// pipe, which can be handed over where a buffer cannot; the pipe grows to take them (up to a receive's 64 KiB,
    /// more than a starting pipe) when the budget allows. Nothing changes when there are none, when a header or an
    /// urgent byte waits, or when no pipe takes them all (the pipe is closed, and the buffer keeps them).
    mutating func moveHeldBytesIntoPipe<IO: RelayIO>(_ io: inout IO) {
        guard let held, pipe == nil, headerBytesLeft == 0, urgentByte == nil, !abandoned,
            var newPipe = io.acquirePipe()
        else { return }
        let count = held.end - held.start
        if count > newPipe.capacity { newPipe.capacity = io.growPipe(newPipe, to: count) }
        let written = io.write(into: newPipe, UnsafeRawBufferPointer(rebasing: held.buffer[held.start..<held.end]))
        guard written == count else {
            io.discardPipe(newPipe)
            return
        }
        io.releaseBuffer(held.buffer)
        self.held = nil
        wantsSplice = false
        pipe = newPipe
        pipeBytes = count
        inflowSinceEmpty = 0
        // The connection may stay here after all (the store full): it splices on from this pipe, as one that
        // started splicing has earned its first pipe.
        if earnedPipeCapacity == 0 { earnedPipeCapacity = io.startingPipe }
    }

    /// Copy for good, as for a source that splice(2) refuses (`--splice no`).
    mutating func copyOnly() {
        spliceUnsupported = true
        wantsSplice = false
    }

    /// Lets go of the pipe when it holds bytes, for a hand-over: the caller passes it on with the snapshot taken
    /// just before. The direction holds nothing afterwards.
    mutating func detachPipeInTransit() -> PipeHandle? {
        guard pipeBytes > 0, let pipe else { return nil }
        self.pipe = nil
        pipeBytes = 0
        return pipe
    }

    /// Whether bytes are held in the pipe or in a buffer, received and not yet delivered.
    public var holdsBytes: Bool { pipeBytes > 0 || holding || urgentByte != nil }

    /// Whether this direction holds a pipe or a buffer that `releaseResources` must give back.
    public var holdsResources: Bool { splicing || holding }

    /// Whether `pump` would do anything: bytes held to send, a source to read (or to drain, once abandoned), or an
    /// end to pass on. Without, none of its steps would make a call, and the relay leaves it out: the usual case
    /// for the direction that an event was not about.
    @inline(__always)
    public func hasWork(_ readiness: Readiness) -> Bool {
        holdsBytes || (sourceEnded ? !finished : readiness[source].readable)
    }

    /// Moves bytes while the sockets allow it, for at most `budget` rounds. `closeFollowsEnd`: the other direction
    /// has finished, so this direction's end of stream ends the connection, whose sockets are closed right after;
    /// close(2) sends the FIN (after any bytes still queued) on a socket whose incoming stream was read to its end,
    /// so the shutdown(2) call is left out.
    public mutating func pump<IO: RelayIO>(
        _ io: inout IO,
        _ readiness: inout Readiness,
        budget: Int,
        closeFollowsEnd: Bool
    ) -> PumpOutcome {
        if abandoned { return drain(&io, &readiness, budget: budget) }
        var rounds = 0
        while true {
            // The round after a receive that emptied the socket, usually: some 100 instructions fewer.
            if !hasWork(readiness) { return .idle }
            var progressed = false
            do {
                // Usually nothing is held: the call (with its prologue, some 40 instructions) is left out.
                if holdsBytes { progressed = try deliverHeldBytes(&io, &readiness) }
                if try takeIn(&io, &readiness) { progressed = true }
                if try passOnEnd(&io, closeFollows: closeFollowsEnd) { progressed = true }
            } catch {
                return .failed(error.side, error.errno)
            }
            if !progressed { return .idle }
            rounds += 1
            if rounds >= budget { return .moreWork }
        }
    }

    /// Gives the direction up: its destination failed after ending its own stream (a keepalive probe or late bytes
    /// answered with a reset, say). `unacknowledged`: what the destination's socket had sent and not seen
    /// acknowledged, which the failure discarded. Bytes held are dropped and counted lost with those; from now on
    /// `pump` only reads the source and drops what it reads, until its end of stream.
    mutating func abandon<IO: RelayIO>(_ io: inout IO, unacknowledged: Int) {
        abandoned = true
        var lost = UInt64(unacknowledged + pipeBytes + unsentAtFailure)
        unsentAtFailure = 0
        if let held {
            lost += UInt64(held.end - held.start)
            io.releaseBuffer(held.buffer)
            self.held = nil
        }
        if urgentByte != nil {
            lost += 1
            urgentByte = nil
        }
        headerBytesLeft = 0
        wantsSplice = false
        if let pipe {
            self.pipe = nil
            if pipeBytes == 0 { io.releasePipe(pipe) } else { io.discardPipe(pipe) }
            pipeBytes = 0
        }
        lostBytes += lost
        if sourceEnded { finished = true }
    }

    /// An abandoned direction's turn: reads what the source sends, drops it, and counts it lost; the source's end of
    /// stream finishes the direction (there is no destination to pass it on to).
    private mutating func drain<IO: RelayIO>(
        _ io: inout IO,
        _ readiness: inout Readiness,
        budget: Int
    ) -> PumpOutcome {
        for _ in 0..<budget {
            guard !sourceEnded, readiness[source].readable else { return .idle }
            do {
                switch try io.receive(from: source, into: io.scratch) {
                case .wouldBlock:
                    readiness[source].readable = false
                    return .idle
                case .processed(0):
                    sourceEnded = true
                    finished = true
                    return .idle
                case .processed(let count):
                    lostBytes += UInt64(count)
                }
            } catch {
                return .failed(source, error)
            }
        }
        return .moreWork
    }

    /// An errno, with the side whose call failed.
    struct SideError: Error {
        let side: Side
        let errno: Errno
    }

    /// The result of a call on `side`; its errno, if it fails, becomes a `SideError` that names the side.
    @inline(__always)
    private func on<Value>(_ side: Side, _ call: @autoclosure () throws(Errno) -> Value) throws(SideError) -> Value {
        do {
            return try call()
        } catch {
            throw SideError(side: side, errno: error)
        }
    }

    /// Step 1: bytes already received go out first, in order (a copy-mode buffer is always emptied before the
    /// direction starts splicing, so at most one of the two holds bytes).
    private mutating func deliverHeldBytes<IO: RelayIO>(
        _ io: inout IO,
        _ readiness: inout Readiness
    ) throws(SideError) -> Bool {
        guard readiness[destination].writable else { return false }
        if let urgentByte {
            switch try on(destination, try io.sendUrgent(to: destination, urgentByte)) {
            case .wouldBlock:
                readiness[destination].writable = false
                return false
            case .processed:
                bytes += 1
                self.urgentByte = nil
                return true
            }
        }
        if var held {
            let unsent = UnsafeRawBufferPointer(rebasing: held.buffer[held.start..<held.end])
            // Bytes still held once the source has ended are its last: the FIN can ride with them.
            switch try on(destination, try io.send(to: destination, unsent, endFollows: sourceEnded)) {
            case .wouldBlock:
                readiness[destination].writable = false
                return false
            case .processed(let count):
                let header = min(headerBytesLeft, count)
                headerBytesLeft -= header
                bytes += UInt64(count - header)
                held.start += count
                if held.isEmpty {
                    io.releaseBuffer(held.buffer)
                    self.held = nil
                    if wantsSplice { startSplicing(&io) }
                } else {
                    self.held = held
                }
                return true
            }
        }
        guard pipeBytes > 0, let pipe else { return false }
        switch try on(destination, try io.splice(from: pipe, to: destination, count: pipeBytes)) {
        case .wouldBlock:
            readiness[destination].writable = false
            return false
        case .processed(let count):
            bytes += UInt64(count)
            pipeBytes -= count
            if pipeFilled {
                deliveredThroughFullPipe += count
                if deliveredThroughFullPipe >= Self.growthSpan * earnedPipeCapacity { grow(&io) }
                if pipeBytes == 0 { pipeFilled = false }
            }
            return count > 0
        }
    }

    /// The pipe, filled up, kept the destination waiting for long enough: the flow earns twice what it had (the pipe
    /// grows to it where it is smaller), the destination twice the unsent limit, and a source on this machine twice
    /// the receive buffer.
    private mutating func grow<IO: RelayIO>(_ io: inout IO) {
        deliveredThroughFullPipe = 0
        guard earnedPipeCapacity < io.largestPipe, let pipe else { return }
        earnedPipeCapacity = min(2 * earnedPipeCapacity, io.largestPipe)
        self.pipe!.capacity = io.growPipe(pipe, to: earnedPipeCapacity)
        limitBuffers(&io)
    }

    /// Gives the destination the unsent limit, and a source on this machine the receive buffer, that the flow has
    /// earned, where they have not got them yet.
    private mutating func limitBuffers<IO: RelayIO>(_ io: inout IO) {
        limitUnsent(&io, forPipe: earnedPipeCapacity)
        limitSourceBuffer(&io, forPipe: earnedPipeCapacity)
    }

    /// Gives the destination the unsent limit of a pipe of `capacity`, unless it has it already.
    private mutating func limitUnsent<IO: RelayIO>(_ io: inout IO, forPipe capacity: Int) {
        let unsent = Self.unsentPerPipe * capacity
        guard unsent != unsentLimit else { return }
        io.limitUnsent(destination, to: unsent)
        unsentLimit = unsent
    }

    /// Gives a source on this machine the receive buffer of a pipe of `capacity`, unless it has it already.
    private mutating func limitSourceBuffer<IO: RelayIO>(_ io: inout IO, forPipe capacity: Int) {
        guard boundsSourceBuffer else { return }
        let wanted = Self.receiveBuffer(forPipe: capacity)
        guard wanted != receiveBufferLimit else { return }
        io.limitReceiveBuffer(source, to: wanted)
        receiveBufferLimit = wanted
    }

    /// Step 2: takes in more from the source, while there is room for it.
    private mutating func takeIn<IO: RelayIO>(
        _ io: inout IO,
        _ readiness: inout Readiness
    ) throws(SideError) -> Bool {
        guard !sourceEnded, readiness[source].readable else { return false }
        if readiness[source].urgent && !spliceUnsupported {
            // splice(2) stops at an urgent mark and never passes it; recv(2) reads the urgent byte in line.
            spliceUnsupported = true
            wantsSplice = false
        }
        if splicing {
            if !spliceUnsupported { return try spliceIn(&io, &readiness, pipeHandle) }
            // Copy from here on, once the pipe's bytes are out.
            guard pipeBytes == 0 else { return false }
            stopSplicing(&io)
        }
        // Copy mode receives only what it can send at once: with a full destination the bytes stay in the
        // source's socket, and the sender slows down.
        guard !holding, urgentByte == nil, readiness[destination].writable else { return false }
        return try copy(&io, &readiness)
    }

    private mutating func spliceIn<IO: RelayIO>(
        _ io: inout IO,
        _ readiness: inout Readiness,
        _ pipe: PipeHandle
    ) throws(SideError) -> Bool {
        let room = pipe.capacity - pipeBytes
        guard room > 0 else { return false }
        let result: IOResult<Int>
        do {
            result = try io.splice(from: source, into: pipe, count: room)
        } catch  where error == .invalidArgument && pipeBytes == 0 {
            // This source cannot be spliced from: copy instead, for the rest of the connection.
            spliceUnsupported = true
            stopSplicing(&io)
            return true
        } catch {
            throw SideError(side: source, errno: error)
        }
        switch result {
        case .processed(0):
            sourceEnded = true
            return true
        case .processed(let count):
            pipeBytes += count
            inflowSinceEmpty += count
            // Full as far as growth goes once it holds what the flow has earned (less than the pipe while the
            // first pipe is larger, see `firstPipe`).
            if pipeBytes >= min(pipe.capacity, earnedPipeCapacity) { pipeFilled = true }
            return true
        case .wouldBlock:
            // With bytes in the pipe, EAGAIN may come from a pipe whose slots are all taken, not from an empty
            // socket: the readable flag stays, and the next round tries again once the pipe has drained.
            guard pipeBytes == 0 else {
                pipeFilled = true
                return false
            }
            readiness[source].readable = false
            if inflowSinceEmpty < io.scratch.count {
                stopSplicing(&io)
            }
            inflowSinceEmpty = 0
            return false
        }
    }

    private mutating func copy<IO: RelayIO>(
        _ io: inout IO,
        _ readiness: inout Readiness
    ) throws(SideError) -> Bool {
        // At an urgent mark, the urgent byte is received alone, to go out alone as urgent data (MSG_OOB), so that
        // the destination's mark is on that byte too (Telnet's and FTP's Synch, rlogin's control bytes).
        var atUrgentMark = false
        if readiness[source].urgent { atUrgentMark = try on(source, try io.atUrgentMark(source)) }
        let scratch = atUrgentMark ? UnsafeMutableRawBufferPointer(rebasing: io.scratch[0..<1]) : io.scratch
        let count: Int
        var endsAfterThese = false
        switch try on(source, try io.receive(from: source, into: scratch)) {
        case .wouldBlock:
            readiness[source].readable = false
            return false
        case .processed(0):
            sourceEnded = true
            return true
        case .processed where atUrgentMark:
            unsentAtFailure = 1
            switch try on(destination, try io.sendUrgent(to: destination, scratch[0])) {
            case .processed: bytes += 1
            case .wouldBlock: urgentByte = scratch[0]
            }
            unsentAtFailure = 0
            return true
        case .processed(let received):
            count = received
            // A receive that did not fill the buffer emptied the socket (TCP's recv takes all that is queued, up to
            // the length): no need for another call to learn EAGAIN. Bytes that arrive later bring a new edge; an
            // end of stream already announced (EPOLLRDHUP) has none to come, so then reading goes on.
            if received < scratch.count && !readiness[source].urgent {
                if readiness[source].hungUp {
                    // The peer's FIN or an error is queued behind these bytes. Without an error, it is the FIN (a
                    // reset or a timeout sets EPOLLERR with the hang-up), and once the queue is empty recv returns
                    // 0 for it whatever arrives later: the source has ended with these bytes, the receive that
                    // would say so can be left out, and the destination's FIN can ride with them. With an error,
                    // the next receive tells which, and the bytes go out at once: a reset may follow, not a FIN.
                    endsAfterThese = !readiness[source].failed
                } else {
                    readiness[source].readable = false
                }
            }
        }
        if count >= min(Self.bulkReceive, scratch.count) {
            if !spliceUnsupported {
                wantsSplice = true
            } else if receiveBufferLimit == 0 {
                // Bulk data that is copied for good (`--splice no`, urgent data): a source on this machine gets the
                // receive buffer a starting pipe would give it at this point, so that autotuning does not grow it
                // while the flow is fast and leave it holding megabytes once the reader stops.
                limitSourceBuffer(&io, forPipe: io.startingPipe)
            }
        }
        if count >= Self.sizeableReceive && unsentLimit == 0 {
            // More than a small exchange, and possibly the start of a download whose reader stops: the destination
            // gets the unsent limit that a starting pipe would give it, before the send, so that what the relay's
            // socket takes in copy mode is bounded as it is when splicing (the rest of a receive is held instead).
            limitUnsent(&io, forPipe: io.startingPipe)
        }
        let sent: Int
        let unsent = UnsafeRawBufferPointer(rebasing: scratch[0..<count])
        do {
            switch try on(destination, try io.send(to: destination, unsent, endFollows: endsAfterThese)) {
            case .processed(let accepted): sent = accepted
            case .wouldBlock: sent = 0
            }
        } catch {
            unsentAtFailure = count
            throw error
        }
        bytes += UInt64(sent)
        if sent < count {
            // The destination is full: keep the rest (the next round tries again and learns from EAGAIN when to
            // wait), and splice from now on, since the destination is slower than the source.
            let rest = count - sent
            let buffer = io.acquireBuffer(holding: rest)
            buffer.baseAddress!.copyMemory(from: scratch.baseAddress! + sent, byteCount: rest)
            held = HeldBytes(buffer: buffer, start: 0, end: rest)
            if !spliceUnsupported { wantsSplice = true }
            if receiveBufferLimit == 0 {
                // The reader may have stopped, and the direction splices only once the held bytes are out: a
                // source on this machine gets the receive buffer of a starting pipe now, as splicing would give
                // it, so that its window does not keep growing into the relay meanwhile.
                limitSourceBuffer(&io, forPipe: io.startingPipe)
            }
        } else if wantsSplice {
            startSplicing(&io)
        }
        if endsAfterThese { sourceEnded = true }
        return true
    }

    /// Step 3: once the source has ended and everything received is out, the destination gets a FIN: from
    /// shutdown(2), or from the close that follows when this end is the connection's last.
    private mutating func passOnEnd<IO: RelayIO>(_ io: inout IO, closeFollows: Bool) throws(SideError) -> Bool {
        guard sourceEnded, !finished, !holdsBytes else { return false }
        if !closeFollows { try on(destination, try io.shutdownWrite(destination)) }
        finished = true
        stopSplicing(&io)
        return true
    }

    private mutating func startSplicing<IO: RelayIO>(_ io: inout IO) {
        wantsSplice = false
        guard pipe == nil, held == nil else { return }
        // Without a pipe (out of descriptors) the direction goes on copying.
        guard var pipe = io.acquirePipe() else { return }
        inflowSinceEmpty = 0
        pipeFilled = false
        deliveredThroughFullPipe = 0
        if earnedPipeCapacity == 0 { earnedPipeCapacity = pipe.capacity }
        let wanted = max(earnedPipeCapacity, Self.firstPipe)
        if pipe.capacity < wanted { pipe.capacity = io.growPipe(pipe, to: wanted) }
        self.pipe = pipe
        limitBuffers(&io)
    }

    private mutating func stopSplicing<IO: RelayIO>(_ io: inout IO) {
        guard let pipe, pipeBytes == 0 else { return }
        io.releasePipe(pipe)
        self.pipe = nil
    }

    /// Holds `header` (not counted as relayed), then `received` (the source's first bytes, read before the first
    /// turn), to be delivered before anything else read from the source.
    mutating func hold<IO: RelayIO>(header: [UInt8], received: UnsafeRawBufferPointer, _ io: inout IO) {
        let count = header.count + received.count
        precondition(held == nil && pipe == nil && count <= io.scratch.count)
        guard count > 0 else { return }
        let buffer = io.acquireBuffer(holding: count)
        buffer.copyBytes(from: header)
        if let source = received.baseAddress {
            (buffer.baseAddress! + header.count).copyMemory(from: source, byteCount: received.count)
        }
        held = HeldBytes(buffer: buffer, start: 0, end: count)
        headerBytesLeft = header.count
    }

    /// Hands the pipe and buffer back when the connection ends; a pipe that still holds bytes (an aborted
    /// connection) cannot be reused and is closed.
    public mutating func releaseResources<IO: RelayIO>(_ io: inout IO) {
        if let held {
            io.releaseBuffer(held.buffer)
            self.held = nil
        }
        guard let pipe else { return }
        self.pipe = nil
        if pipeBytes == 0 {
            io.releasePipe(pipe)
        } else {
            io.discardPipe(pipe)
            pipeBytes = 0
        }
    }
}
