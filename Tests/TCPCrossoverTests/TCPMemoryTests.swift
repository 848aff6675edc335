import Synchronization
import Testing

@testable import TCPCrossover

/// `--loopback-mss`'s adaptive default: what the kernel's files say, when TCP memory counts as high, and how often
/// the loops read it.
@Suite struct TCPMemoryTests {
    @Test func sockstat_givesTheTCPLinesMemory() {
        let sockstat = """
            sockets: used 812
            TCP: inuse 507 orphan 0 tw 12 alloc 1015 mem 221540
            UDP: inuse 3 mem 7
            FRAG: inuse 0 memory 0

            """
        #expect(TCPMemory.allocatedPages(sockstat: Array(sockstat.utf8)) == 221_540)
        #expect(TCPMemory.allocatedPages(sockstat: Array("UDP: inuse 3 mem 7\n".utf8)) == nil)
        #expect(TCPMemory.allocatedPages(sockstat: Array("TCP: inuse 5 mem\n".utf8)) == nil)
        #expect(TCPMemory.allocatedPages(sockstat: []) == nil)
    }

    @Test func tcpMem_givesItsPressureThreshold() {
        #expect(TCPMemory.pressurePages(tcpMem: Array("287907\t383878\t575814\n".utf8)) == 383_878)
        #expect(TCPMemory.pressurePages(tcpMem: Array("1 2\n".utf8)) == nil)
        #expect(TCPMemory.pressurePages(tcpMem: Array("1 x 3\n".utf8)) == nil)
        #expect(TCPMemory.pressurePages(tcpMem: Array("1 0 3\n".utf8)) == nil)
        // The kernel's default: a sixteenth of the memory, 1.5 GiB of 24 GiB.
        #expect(TCPMemory.defaultPressurePages(memoryPages: 24 << 18) == 1536 << 8)
    }

    @Test func headroom_isWhatIsLeftToAQuarterOfThePressureThreshold() {
        #expect(TCPMemory(allocatedPages: 0, pressurePages: 383_878).headroomPages == 95_969)
        #expect(TCPMemory(allocatedPages: 95_000, pressurePages: 383_878).headroomPages == 969)
        #expect(TCPMemory(allocatedPages: 200_000, pressurePages: 383_878).headroomPages == 0)
    }

    @Test func segmentSize_followsTheChoiceAndTheBudget() {
        var asked = 0
        func size(_ choice: LoopbackSegments, wide: Bool) -> Int? {
            choice.segmentSize(wide: {
                asked += 1
                return wide
            })
        }
        #expect(size(.system, wide: false) == nil)
        #expect(size(.fixed(1200), wide: true) == 1200)
        #expect(asked == 0)
        #expect(size(.standard, wide: true) == nil)
        #expect(size(.standard, wide: false) == 4096)
        #expect(asked == 2)
    }

    /// Room for as many connections as the headroom holds 4 MiB send buffers, counted at connect and given back at
    /// the end, so that a burst of connections is limited before their servers' buffers fill; one reading a second
    /// whatever the connections; a kernel whose figures cannot be read leaves room for none.
    @Test func budget_admitsWhatTheHeadroomHolds_andReadsAtMostOnceASecond() {
        // 4 KiB pages: 1,024 pages hold one reserved send buffer; a threshold of 4 x 3,000 pages leaves room for 2
        // connections when TCP holds 500 pages (2,500 left), and for none at 2,500.
        let readings = Mutex<[TCPMemory?]>([
            TCPMemory(allocatedPages: 500, pressurePages: 12_000),
            TCPMemory(allocatedPages: 2_500, pressurePages: 12_000),
            nil, TCPMemory(allocatedPages: 0, pressurePages: 12_000),
        ])
        let reads = Atomic<Int>(0)
        let budget = WideSegmentBudget(pageSize: 4096) {
            reads.add(1, ordering: .relaxed)
            return readings.withLock { $0.removeFirst() }
        }
        #expect(budget.admit(now: 5000))
        #expect(budget.admit(now: 5001))
        #expect(!budget.admit(now: 5002))
        budget.release()
        #expect(budget.admit(now: 5999))
        #expect(reads.load(ordering: .relaxed) == 1)
        #expect(budget.openConnections == 2)
        // Fuller: no room while 2 are open, nor for one more after one of them ends.
        #expect(!budget.admit(now: 6000))
        budget.release()
        #expect(!budget.admit(now: 6500))
        // Unreadable: none.
        budget.release()
        #expect(!budget.admit(now: 7000))
        // Nothing held: 2 (3,000 pages hold 2.9 send buffers).
        #expect(budget.admit(now: 8000) && budget.admit(now: 8000))
        #expect(!budget.admit(now: 8000))
        #expect(reads.load(ordering: .relaxed) == 4)
    }

    /// A connection taken over from the previous process keeps the segments its connect settled, so it takes a place
    /// without asking; the places it holds leave that much less room for new connections until it ends.
    @Test func budget_heldPlaces_countAgainstTheRoomOfNewConnections() {
        let budget = WideSegmentBudget(pageSize: 4096) { TCPMemory(allocatedPages: 500, pressurePages: 12_000) }
        budget.hold()
        budget.hold()
        budget.hold()
        #expect(budget.openConnections == 3)
        // Room for 2, and 3 held: none for a new connection, nor after one of them ends.
        #expect(!budget.admit(now: 5000))
        budget.release()
        #expect(!budget.admit(now: 5000))
        budget.release()
        budget.release()
        #expect(budget.admit(now: 5000))
        #expect(budget.openConnections == 1)
    }
}
