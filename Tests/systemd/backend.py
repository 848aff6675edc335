#!/usr/bin/env python3
"""A backend for the systemd suite: listens on ADDRESS:PORT, greets each client with its port and the address it sees
("220 backend PORT sees ADDRESS"), then
echoes every byte back until the client half-closes.

    backend.py ADDRESS PORT [--proxy]

With --proxy every connection must start with a PROXY protocol header (v1 or v2); the greeting then names the
client address from the header, so a test can tell that the relay passed it on. A connection without a valid header
is closed without a greeting.
"""

import socket
import struct
import sys
import threading

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def receive_exactly(connection, count):
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise EOFError("closed inside the PROXY header")
        data += chunk
    return data


def read_proxy_header(connection):
    """Reads a PROXY header and returns the client address it carries (or 'LOCAL' / 'UNKNOWN')."""
    start = receive_exactly(connection, 12)
    if start == PROXY_V2_SIGNATURE:
        version_command, family, length = struct.unpack("!BBH", receive_exactly(connection, 4))
        body = receive_exactly(connection, length)
        if version_command >> 4 != 2:
            raise ValueError("PROXY v2 header with version %d" % (version_command >> 4))
        if version_command & 0x0F == 0:
            return "LOCAL"
        if family >> 4 == 1:
            return socket.inet_ntop(socket.AF_INET, body[0:4])
        if family >> 4 == 2:
            return socket.inet_ntop(socket.AF_INET6, body[0:16])
        return "UNKNOWN"
    if start.startswith(b"PROXY "):
        line = start
        while not line.endswith(b"\r\n"):
            line += receive_exactly(connection, 1)
            if len(line) > 107:
                raise ValueError("PROXY v1 header longer than 107 bytes")
        fields = line.decode("ascii").split()
        return fields[2] if fields[1] != "UNKNOWN" else "UNKNOWN"
    raise ValueError("no PROXY header: %r" % start)


def serve(connection, peer, port, proxy):
    with connection:
        try:
            seen = read_proxy_header(connection) if proxy else peer[0]
        except (ValueError, EOFError, OSError) as error:
            print("refused %s: %s" % (peer[0], error), flush=True)
            return
        connection.sendall(b"220 backend %d sees %s\r\n" % (port, seen.encode("ascii")))
        print("greeted %s as %s" % (peer[0], seen), flush=True)
        while True:
            data = connection.recv(65536)
            if not data:
                break
            connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)


def main():
    address, port = sys.argv[1], int(sys.argv[2])
    proxy = "--proxy" in sys.argv[3:]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(512)
    print("listening on %s port %d%s" % (address, port, " (PROXY)" if proxy else ""), flush=True)
    while True:
        connection, peer = listener.accept()
        threading.Thread(target=serve, args=(connection, peer, port, proxy), daemon=True).start()


if __name__ == "__main__":
    main()
