/// One of the two sockets of a relayed connection.
public enum Side: Sendable, Equatable, CustomStringConvertible {
    /// The socket accepted from the client.
    case client
    /// The socket connected to the remote server.
    case server

    public var other: Side { self == .client ? .server : .client }

    public var description: String { self == .client ? "client" : "server" }
}

/// A kernel pipe used to splice(2) one direction's bytes without copying them through user space.
public struct PipeHandle: Equatable, Sendable {
    public let readEnd: CInt
    public let writeEnd: CInt
    /// The pipe's capacity in bytes, from F_GETPIPE_SZ (or F_SETPIPE_SZ when it grew).
    public var capacity: Int

    public init(readEnd: CInt, writeEnd: CInt, capacity: Int) {
        self.readEnd = readEnd
        self.writeEnd = writeEnd
        self.capacity = capacity
    }
}

/// What the relay's state machine asks of the operating system. `SocketIO` implements it over a connection's two
/// sockets and its event loop's pools; the tests implement it with a simulated kernel, so that the relay's logic
/// runs without sockets.
///
/// Every call is non-blocking: `.wouldBlock` says that the socket (or pipe) has nothing to give or no room now.
public protocol RelayIO {
    /// recv(2) from `side`.
    mutating func receive(from side: Side, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> IOResult<Int>
    /// send(2) to `side`. `endFollows`: these are the source's last bytes, and shutdownWrite(side), or the close of
    /// the finished connection, is the next call on that side once they are all taken (or the connection aborts):
    /// TCP may hold them back and send them with the FIN, one segment instead of two (MSG_MORE).
    mutating func send(to side: Side, _ bytes: UnsafeRawBufferPointer, endFollows: Bool) throws(Errno) -> IOResult<Int>
    /// splice(2) from `side` into `pipe`.
    mutating func splice(from side: Side, into pipe: PipeHandle, count: Int) throws(Errno) -> IOResult<Int>
    /// splice(2) from `pipe` to `side`.
    mutating func splice(from pipe: PipeHandle, to side: Side, count: Int) throws(Errno) -> IOResult<Int>
    /// shutdown(2) SHUT_WR on `side`: passes an end of stream on.
    mutating func shutdownWrite(_ side: Side) throws(Errno)
    /// sockatmark(3) on `side`: the next byte to receive is urgent data (read in line, SO_OOBINLINE).
    mutating func atUrgentMark(_ side: Side) throws(Errno) -> Bool
    /// send(2) of one byte with MSG_OOB to `side`: TCP sends it as urgent data.
    mutating func sendUrgent(to side: Side, _ byte: UInt8) throws(Errno) -> IOResult<Int>

    /// ioctl(2) SIOCOUTQ on `side`: bytes sent to it that its peer has not acknowledged (and a FIN not yet
    /// acknowledged); still known after a reset, for the bytes that the reset discarded.
    mutating func unacknowledgedBytes(_ side: Side) -> Int

    /// An empty pipe for a direction that starts splicing, or nil when none can be had (out of descriptors).
    mutating func acquirePipe() -> PipeHandle?
    /// Gives back an empty pipe.
    mutating func releasePipe(_ pipe: PipeHandle)
    /// Grows `pipe` towards `bytes` (F_SETPIPE_SZ), at most to the largest pipe size (`--bs`) and within the
    /// process's budget of pipe memory; returns its capacity afterwards, unchanged when the growth was refused.
    mutating func growPipe(_ pipe: PipeHandle, to bytes: Int) -> Int
    /// The largest capacity a pipe may grow to (`--bs`).
    var largestPipe: Int { get }
    /// The capacity a pipe starts with.
    var startingPipe: Int { get }
    /// setsockopt(2) SO_RCVBUF on `side`: how much the peer may send ahead of the relay's reading. The kernel's
    /// autotuning no longer grows that buffer afterwards.
    mutating func limitReceiveBuffer(_ side: Side, to bytes: Int)
    /// setsockopt(2) TCP_NOTSENT_LOWAT on `side`: how much of what the relay sent may wait unsent in that socket.
    mutating func limitUnsent(_ side: Side, to bytes: Int)
    /// Closes a pipe that still holds bytes of an aborted connection.
    mutating func discardPipe(_ pipe: PipeHandle)
    /// write(2) of `bytes` into an empty pipe, for a hand-over: how many it took (0 when it failed).
    mutating func write(into pipe: PipeHandle, _ bytes: UnsafeRawBufferPointer) -> Int
    /// A buffer of at least `count` bytes (at most `scratch`'s size) for bytes that the destination could not take
    /// at once.
    mutating func acquireBuffer(holding count: Int) -> UnsafeMutableRawBufferPointer
    /// Gives back a buffer from `acquireBuffer`.
    mutating func releaseBuffer(_ buffer: UnsafeMutableRawBufferPointer)
    /// A buffer shared by every connection of the event loop, for one receive-then-send.
    var scratch: UnsafeMutableRawBufferPointer { get }
}
