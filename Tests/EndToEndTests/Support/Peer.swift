import Foundation
import Glibc
import TestSupport

/// A reproducible stream of bytes: byte `i` of the stream for `seed` is always the same, so a receiver can check
/// every byte at its position without keeping what was sent.
struct ByteStream {
    let seed: UInt64

    /// Fills `buffer` with the stream's bytes from `offset` on.
    func fill(_ buffer: UnsafeMutableRawBufferPointer, from offset: Int) {
        for index in 0..<buffer.count {
            let position = UInt64(offset + index)
            // A cheap mix of seed and position (splitmix64's finaliser), one byte of it.
            var z = (seed &+ position / 8) &* 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            buffer[index] = UInt8(truncatingIfNeeded: z >> ((position % 8) * 8))
        }
    }

    func bytes(_ range: Range<Int>) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: range.count)
        result.withUnsafeMutableBytes { fill($0, from: range.lowerBound) }
        return result
    }
}

/// What one side of a randomized connection does: send `length` bytes of its stream in chunks (with pauses), then
/// either end cleanly (FIN) and read until the other side ends, or abort (reset) once it has sent `abortAfter`
/// bytes (and received at least one, so that the connection exists end to end).
struct PeerPlan {
    var stream: ByteStream
    var length: Int
    var chunks: [Int]
    var pauses: [Int]  // microseconds before each chunk
    var abortAfter: Int?

    static func random(_ random: inout SeededRandom, seed: UInt64, length: Int, abortAfter: Int?) -> PeerPlan {
        var chunks: [Int] = []
        var pauses: [Int] = []
        var left = length
        let paused = Int.random(in: 0..<3, using: &random) == 0
        while left > 0 {
            let chunk = min(left, [1, 7, 100, 1400, 4096, 16_384, 65_536].randomElement(using: &random)!)
            chunks.append(chunk)
            pauses.append(paused && Bool.random(using: &random) ? Int.random(in: 0...3000, using: &random) : 0)
            left -= chunk
        }
        return PeerPlan(
            stream: ByteStream(seed: seed), length: length, chunks: chunks, pauses: pauses, abortAfter: abortAfter)
    }
}

/// What one side observed.
struct PeerResult {
    var received: [UInt8] = []
    var sawEndOfStream = false
    var sawReset = false
    var aborted = false
    var timedOut = false
    var sent = 0
}

/// Runs one side of a connection on `fd` (made non-blocking here) with poll(2) in the calling thread, sending and
/// receiving at once, as `plan` says. Closes `fd`.
func runPeer(_ fd: Int32, _ plan: PeerPlan, timeout: Double = 30) -> PeerResult {
    var result = PeerResult()
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    var chunk = 0
    var chunkOffset = 0
    var finished = false  // FIN sent
    var nextSend = Date()
    let deadline = Date().addingTimeInterval(timeout)
    var buffer = [UInt8](repeating: 0, count: 65536)
    var outgoing = [UInt8]()
    func abort() {
        var value = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
        close(fd)
        result.aborted = true
    }
    while Date() < deadline {
        if let limit = plan.abortAfter, result.sent >= limit, !result.received.isEmpty {
            abort()
            return result
        }
        let sending = !finished && !result.sawReset && chunk <= plan.chunks.count
        var entry = pollfd(fd: fd, events: Int16(POLLIN) | (sending ? Int16(POLLOUT) : 0), revents: 0)
        _ = poll(&entry, 1, 1)
        if entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                result.received += buffer[0..<count]
            } else if count == 0 {
                result.sawEndOfStream = true
            } else if errno == ECONNRESET || errno == EPIPE {
                result.sawReset = true
            }
        }
        if sending && entry.revents & Int16(POLLOUT) != 0 && Date() >= nextSend {
            if chunk == plan.chunks.count {
                if plan.abortAfter == nil {
                    shutdown(fd, Int32(SHUT_WR))
                    finished = true
                } else {
                    chunk += 1  // all sent; the abort waits for its condition
                }
            } else {
                if outgoing.isEmpty {
                    outgoing = plan.stream.bytes(result.sent..<(result.sent + plan.chunks[chunk] - chunkOffset))
                }
                let count = outgoing.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if count > 0 {
                    result.sent += count
                    chunkOffset += count
                    outgoing.removeFirst(count)
                    if outgoing.isEmpty && chunkOffset == plan.chunks[chunk] {
                        chunk += 1
                        chunkOffset = 0
                        if chunk < plan.pauses.count {
                            nextSend = Date().addingTimeInterval(Double(plan.pauses[chunk]) / 1_000_000)
                        }
                    }
                } else if count < 0 && (errno == EPIPE || errno == ECONNRESET) {
                    result.sawReset = true
                }
            }
        }
        let done = (finished || result.sawReset) && (result.sawEndOfStream || result.sawReset)
        if done && plan.abortAfter == nil {
            close(fd)
            return result
        }
        if result.sawReset && plan.abortAfter != nil {
            // The other side aborted first; nothing left to do.
            close(fd)
            return result
        }
    }
    result.timedOut = true
    close(fd)
    return result
}
