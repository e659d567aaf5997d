#!/usr/bin/env python3
"""Cross-node visibility, measured from outside the proxies (same probe for any peer).

    visibility_probe.py A_PORT B_PORT SECONDS [INTERVAL_S]

Every INTERVAL_S (default 0.05) for SECONDS: REGISTER a fresh AoR
probe-<run>-<n>@127.0.0.1 on node A (127.0.0.1:A_PORT) with a Contact on this
probe's own socket; when A answers 200, send OPTIONS for that AoR to node B every
0.25 ms (new transaction each time) until B forwards one to the Contact. The
visibility of that change is the time from A's 200 to the forwarded OPTIONS
arriving here (it includes up to 0.25 ms of polling granularity and B's
forwarding). Prints one JSON line: count, lost (not visible within 2 s), p50,
p90, p99, max in milliseconds. Loopback only; bounded by SECONDS + 5 s.
"""
import json
import os
import random
import socket
import sys
import time

a_port, b_port, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
run = f"{os.getpid()}x{random.randrange(1 << 30):x}"

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.setblocking(False)
me = sock.getsockname()[1]
A, B = ("127.0.0.1", a_port), ("127.0.0.1", b_port)


def request(method, ruri, user, cseq, extra=""):
    branch = f"z9hG4bK{random.randrange(1 << 62):x}"
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{user}@127.0.0.1>;tag={random.randrange(1 << 32):x}\r\n"
        f"To: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: {run}-{user}-{method}-{cseq}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def drain():
    """Read every waiting datagram: (first line, the datagram)."""
    out = []
    while True:
        try:
            data, peer = sock.recvfrom(65535)
        except BlockingIOError:
            return out
        out.append((data.split(b"\r\n", 1)[0].decode(errors="replace"), data, peer))


def answer(data, peer):
    """Answer a forwarded request 200 (copy Via, From, To, Call-ID, CSeq)."""
    keep = [
        line
        for line in data.split(b"\r\n")
        if line.lower().split(b":", 1)[0].strip() in (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")
    ]
    sock.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", peer)


samples, lost = [], 0
deadline = time.monotonic() + seconds
n = 0
while time.monotonic() < deadline:
    n += 1
    user = f"probe-{run}-{n}"
    sock.sendto(
        request(
            "REGISTER",
            "sip:127.0.0.1",
            user,
            1,
            f"Contact: <sip:{user}@127.0.0.1:{me}>\r\nExpires: 60\r\n",
        ),
        A,
    )
    t_ok = None
    t_send = time.monotonic()
    while t_ok is None and time.monotonic() - t_send < 2:
        for first, data, peer in drain():
            if first.startswith("SIP/2.0 200") and f"{user}-REGISTER".encode() in data:
                t_ok = time.monotonic()
            elif not first.startswith("SIP/2.0"):
                answer(data, peer)
        time.sleep(0.0002)
    if t_ok is None:
        lost += 1
        continue
    seen, cseq, next_poll = None, 1, 0.0
    while seen is None and time.monotonic() - t_ok < 2:
        now = time.monotonic()
        if now >= next_poll:
            sock.sendto(request("OPTIONS", f"sip:{user}@127.0.0.1", user, cseq), B)
            cseq += 1
            next_poll = now + 0.00025
        for first, data, peer in drain():
            if first.startswith("OPTIONS ") and f"sip:{user}@".encode() in first.encode():
                if seen is None:
                    seen = time.monotonic()
                answer(data, peer)
            elif not first.startswith("SIP/2.0"):
                answer(data, peer)
        time.sleep(0.0001)
    if seen is None:
        lost += 1
    else:
        samples.append((seen - t_ok) * 1000)
    time.sleep(max(0.0, interval - (time.monotonic() - t_send)))

samples.sort()


def pct(p):
    return round(samples[min(len(samples) - 1, int(p * len(samples)))], 3) if samples else None


print(json.dumps({"count": len(samples), "lost": lost, "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": round(samples[-1], 3) if samples else None}))
