import Glibc
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

    @Test func ownAddressCache_answersForAMinuteThenAsksAgain() throws {
        func address(_ text: String) throws -> SocketAddress {
            guard case .address(let address) = try Endpoint(parsing: text).host else { throw CancellationError() }
            return address
        }
        let own = try address("192.0.2.1:25")
        let far = try address("[2001:db8::2]:25")
        var cache = OwnAddressCache()
        #expect(cache.isOnThisMachine(own, now: 0) == nil)
        // The kernel picked the remote's own address as the source: the remote is on this machine.
        #expect(cache.learn(own, source: try address("192.0.2.1:40000"), now: 1_000))
        #expect(!cache.learn(far, source: try address("[2001:db8::1]:40000"), now: 1_000))
        #expect(cache.isOnThisMachine(own, now: 1_000 + OwnAddressCache.lifetime - 1) == true)
        #expect(cache.isOnThisMachine(far, now: 1_000 + OwnAddressCache.lifetime - 1) == false)
        #expect(cache.isOnThisMachine(own, now: 1_000 + OwnAddressCache.lifetime) == nil)
        // Another port of the same host is another remote.
        #expect(cache.isOnThisMachine(try address("192.0.2.1:26"), now: 1_000) == nil)
        // Full, it starts afresh rather than grow.
        for port in 1...OwnAddressCache.capacity {
            _ = cache.learn(try address("198.51.100.9:\(port)"), source: try address("198.51.100.1:1"), now: 2_000)
        }
        #expect(cache.isOnThisMachine(own, now: 2_000) == nil)
        #expect(cache.isOnThisMachine(try address("198.51.100.9:\(OwnAddressCache.capacity)"), now: 2_000) == false)
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

@Suite struct LineBuilderTests {
    /// Every kind of IPv6 address written as inet_ntop(3) writes it: zero runs of every length and place, ties,
    /// IPv4-mapped and IPv4-compatible forms; and random ones.
    @Test func hosts_areWrittenAsInetNtopWritesThem() {
        var random = SeededRandom(seed: 5952)
        var samples: [[UInt8]] = []
        for pattern in 0..<256 {
            // Each bit of the pattern says whether a group is zero.
            var bytes = [UInt8](repeating: 0, count: 16)
            for group in 0..<8 where pattern & (1 << group) != 0 {
                bytes[2 * group] = UInt8.random(in: 0...255, using: &random)
                bytes[2 * group + 1] = UInt8.random(in: 1...255, using: &random)
            }
            samples.append(bytes)
        }
        samples.append([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1])
        samples.append([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1])
        samples.append([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0])
        for _ in 0..<2000 { samples.append((0..<16).map { _ in UInt8.random(in: 0...255, using: &random) }) }
        for bytes in samples {
            var words: (UInt64, UInt64) = (0, 0)
            withUnsafeMutableBytes(of: &words) { $0.copyBytes(from: bytes) }
            let address = SocketAddress(family: .ipv6, bytes: words, port: 443)
            let expected = withUnsafeBytes(of: words) { Syscall.format(AF_INET6, $0.baseAddress!) }
            #expect(address.host == expected, "\(bytes)")
            #expect(address.description == "[\(expected)]:443")
        }
        for _ in 0..<500 {
            let bytes = (0..<4).map { _ in UInt8.random(in: 0...255, using: &random) }
            var words: (UInt64, UInt64) = (0, 0)
            withUnsafeMutableBytes(of: &words) { $0.copyBytes(from: bytes) }
            let address = SocketAddress(family: .ipv4, bytes: words, port: 8)
            let expected = withUnsafeBytes(of: words) { Syscall.format(AF_INET, $0.baseAddress!) }
            #expect(address.description == "\(expected):8")
        }
    }

    @Test func numbers_areWrittenInDecimal() {
        for value: UInt64 in [0, 7, 10, 99, 100, 65535, 1_000_000, 12_345_678_901, .max] {
            var line = LineBuilder()
            line.append(value)
            #expect(line.string == String(value))
        }
        var line = LineBuilder()
        line.appendSeconds(milliseconds: 12)
        line.append(" ")
        line.appendSeconds(milliseconds: 61_005)
        line.append(" ")
        line.appendSeconds(milliseconds: 0)
        #expect(line.string == "0.012 61.005 0.000")
    }
}
