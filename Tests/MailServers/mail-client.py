#!/usr/bin/python3
"""The "outside" mail client of the mail server tests: one SMTP or IMAP session, its answers printed one per line.

    mail-client.py smtp LABEL HOST PORT   MAIL FROM a stranger, RCPT TO a far-away domain, then RCPT TO root of the
                                          local domain and DATA, then a message of 3.2 MB to root (bulk data,
                                          which the relay splices): prints "LABEL relay CODE TEXT",
                                          "LABEL local CODE TEXT", "LABEL data CODE TEXT", "LABEL large CODE TEXT"
    mail-client.py imap LABEL HOST PORT USER PASSWORD
                                          a plaintext LOGIN: prints "LABEL login ok" or "LABEL login refused TEXT"

A connection the server closes or resets prints "LABEL closed REASON". Every step has a timeout.
"""
import imaplib
import smtplib
import socket
import sys

TIMEOUT = 20
# Lines of 80 bytes in the large message: 3.2 MB, which Postfix's qmgr logs as size=.
LARGE_LINES = 40_000


def say(*words):
    print(" ".join(str(word) for word in words), flush=True)


def smtp(label, host, port):
    try:
        session = smtplib.SMTP(host, int(port), local_hostname="client.example.net", timeout=TIMEOUT)
        session.ehlo()
        session.mail("spammer@evil.example")
        code, text = session.rcpt("victim@far-away.example")
        say(label, "relay", code, text.decode(errors="replace"))
        session.rset()
        session.mail("sender@client.example.net")
        code, text = session.rcpt("root@mx.example.org")
        say(label, "local", code, text.decode(errors="replace"))
        if code == 250:
            code, text = session.data(b"Subject: tcp-crossover test\r\n\r\nHello over IPv6.\r\n")
            say(label, "data", code, text.decode(errors="replace"))
            session.mail("sender@client.example.net")
            session.rcpt("root@mx.example.org")
            lines = b"".join(b"%07d %s\r\n" % (number, b"x" * 70) for number in range(LARGE_LINES))
            code, text = session.data(b"Subject: tcp-crossover large test\r\n\r\n" + lines)
            say(label, "large", code, text.decode(errors="replace"))
        session.quit()
    except (smtplib.SMTPException, OSError) as error:
        say(label, "closed", type(error).__name__, error)


def imap(label, host, port, user, password):
    try:
        session = imaplib.IMAP4(host, int(port), timeout=TIMEOUT)
    except (imaplib.IMAP4.error, OSError) as error:
        say(label, "closed", type(error).__name__, error)
        return
    try:
        session.login(user, password)
        say(label, "login ok")
        session.logout()
    except imaplib.IMAP4.error as error:
        say(label, "login refused", error)
    except OSError as error:
        say(label, "closed", type(error).__name__, error)


if __name__ == "__main__":
    socket.setdefaulttimeout(TIMEOUT)
    {"smtp": smtp, "imap": imap}[sys.argv[1]](*sys.argv[2:])
