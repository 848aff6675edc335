import Testing

@testable import TCPCrossover

@Suite struct LogQueueTests {
    /// Three lines of 6, 4 and 8 bytes.
    static let lines = Array("first\nsec\nthird!!\n".utf8)

    static func fit(_ room: Int) -> (bytes: Int, dropped: Int) {
        lines.withUnsafeBytes { LogQueue.wholeLines(of: $0, lines: 3, room: room) }
    }

    @Test func wholeLines_whenAllFit_keepsEverything() {
        #expect(Self.fit(18) == (18, 0))
        #expect(Self.fit(1000) == (18, 0))
    }

    @Test func wholeLines_neverCutsALine_andCountsTheLinesLeftOut() {
        #expect(Self.fit(17) == (10, 1))
        #expect(Self.fit(10) == (10, 1))
        #expect(Self.fit(9) == (6, 2))
        #expect(Self.fit(6) == (6, 2))
        #expect(Self.fit(5) == (0, 3))
        #expect(Self.fit(0) == (0, 3))
    }
}

@Suite struct LogQueueLimitTests {
    /// A queue without a writer thread holds lines until the process exits: a test can fill it.
    @Test func fullQueue_dropsConnectionLines_butKeepsRoomForTheStopLine() {
        let queue = LogQueue(writerThread: false)
        let line = Array(repeating: UInt8(ascii: "x"), count: 99) + [UInt8(ascii: "\n")]
        let submitted = LogQueue.capacity / line.count + 500
        for _ in 0..<submitted {
            #expect(line.withUnsafeBytes { queue.submit($0, lines: 1) })
        }
        let stopLine = Array("stopping: no new connections, 3 still active\n".utf8)
        #expect(stopLine.withUnsafeBytes { queue.submit($0, lines: 1, important: true) })
        let (lines, dropped) = queue.takeWaiting()
        #expect(lines.count == LogQueue.capacity / line.count * line.count + stopLine.count)
        #expect(dropped == 500)
        #expect(Array(lines.suffix(stopLine.count)) == stopLine)
    }
}
