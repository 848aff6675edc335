import Glibc
import Testing

@testable import TCPCrossover

/// The log line's ending vocabulary: fixed tokens a log search relies on.
@Suite struct ConnectionEndTests {
    static func line(_ ending: Connection.Ending, remote: Bool = true) throws -> String {
        var client = try #require(SocketAddress(numericHost: "2001:db8::5"))
        client.port = 51234
        var local = try #require(SocketAddress(numericHost: "2001:db8::1"))
        local.port = 80
        let connection = Connection(
            slot: 0, generation: 1, service: 0, client: -1, clientAddress: client, localAddress: local, now: 1000)
        if remote {
            connection.remoteAddress = SocketAddress(numericHost: "127.0.0.1")
            connection.remoteAddress?.port = 80
        }
        var line = LineBuilder()
        connection.summary(ending, now: 1031, into: &line)
        return line.string
    }

    @Test func summary_endsWithTheTokenAndTheDetail() throws {
        let prefix = "[2001:db8::5]:51234 -> [2001:db8::1]:80 -> 127.0.0.1:80: 0 bytes up, 0 bytes down, 0.031 s, "
        #expect(try Self.line(.completed(first: .client)) == prefix + "end=client-closed")
        #expect(try Self.line(.completed(first: .server)) == prefix + "end=server-closed")
        #expect(try Self.line(.completed(first: nil)) == prefix + "end=closed")
        #expect(
            try Self.line(.failed(.server, .connectionReset))
                == prefix + "end=server-reset: \(Errno.connectionReset)")
        #expect(try Self.line(.failed(.client, .timedOut)) == prefix + "end=client-error: \(Errno.timedOut)")
        #expect(
            try Self.line(.refused(.accessRule, "by --deny 192.0.2.0/24")) == prefix
                + "end=refused: by --deny 192.0.2.0/24")
        #expect(try Self.line(.idleTimeout) == prefix + "end=idle-timeout")
        #expect(try Self.line(.shutdown) == prefix + "end=shutdown")
        var remote = SocketAddress(numericHost: "127.0.0.1")!
        remote.port = 80
        let refused = ConnectFailureReport(
            attempts: [(ConnectTarget(remote, remote: 0), .error(AttemptError(.connect, .connectionRefused)))],
            deadline: 30_000)
        #expect(
            try Self.line(.connectFailed(refused), remote: false)
                == "[2001:db8::5]:51234 -> [2001:db8::1]:80 -> -: 0 bytes up, 0 bytes down, 0.031 s, "
                + "end=connect-failed: connect to 127.0.0.1:80 failed: \(Errno.connectionRefused)")
    }

    @Test func failure_isAResetWhenThePeerResetOrTheSocketIsNoLongerConnected() {
        for errno in [Errno.connectionReset, .brokenPipe, Errno(ENOTCONN)] {
            #expect(ConnectionEnd(failedOn: .client, errno) == .clientReset)
            #expect(ConnectionEnd(failedOn: .server, errno) == .serverReset)
        }
        #expect(ConnectionEnd(failedOn: .client, .timedOut) == .clientError)
        #expect(ConnectionEnd(failedOn: .server, Errno(EHOSTUNREACH)) == .serverError)
    }

    @Test func tokens_areDistinctAndWrittenInLowerCaseWithHyphens() {
        let tokens = ConnectionEnd.allCases.map(\.token.description)
        #expect(Set(tokens).count == tokens.count)
        #expect(tokens.allSatisfy { $0.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d } })
    }
}
