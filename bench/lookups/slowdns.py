#!/usr/bin/python3
"""Slow DNS responder for bench/lookups/run.sh.

Runs inside the benchmark's private mount namespace, bound to one loopback address. Every
query it receives comes from the portnanny resolver under test (through the C library). It
answers every well-formed query with NXDOMAIN (authoritative, question echoed) exactly DELAY
milliseconds after it arrived, so a DNSBL lookup is "not listed" and costs DELAY ms. One thread:
replies wait in a FIFO (the delay is constant, so arrival order is due order) and the loop
sleeps in select() until the next is due or a query arrives. It writes the number of queries
seen so far to COUNTFILE every 0.2 s, and exits on SIGTERM or when its parent dies.

Usage: slowdns.py ADDR DELAY_MS COUNTFILE
"""

import collections
import os
import select
import signal
import socket
import sys
import time


def reply_for(query):
    """NXDOMAIN for a query (header + first question), or None for junk."""
    if len(query) < 12 or query[4:6] != b"\x00\x01":
        return None
    pos = 12
    while True:
        if pos >= len(query):
            return None
        n = query[pos]
        pos += 1
        if n == 0:
            break
        if n > 63:
            return None
        pos += n
    end = pos + 4
    if end > len(query):
        return None
    # QR=1, AA=1, RD copied; RA=1, RCODE=3; QDCOUNT=1, no other records.
    flags = bytes([0x84 | (query[2] & 0x01), 0x83])
    return query[0:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:end]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    addr, delay, countfile = sys.argv[1], int(sys.argv[2]) / 1000.0, sys.argv[3]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    parent = os.getppid()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((addr, 53))
    s.setblocking(False)
    pending = collections.deque()
    count = 0
    next_write = 0.0
    while not stop:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, r, peer = pending.popleft()
            try:
                s.sendto(r, peer)
            except OSError:
                pass
        if now >= next_write:
            with open(countfile + ".tmp", "w") as f:
                f.write("%d\n" % count)
            os.replace(countfile + ".tmp", countfile)
            next_write = now + 0.2
            if os.getppid() != parent:
                break
        wait = next_write - now
        if pending:
            wait = min(wait, max(0.0, pending[0][0] - now))
        try:
            ready, _, _ = select.select([s], [], [], wait)
        except InterruptedError:
            continue
        if not ready:
            continue
        # Drain what has arrived (bounded, so due replies are never starved).
        for _ in range(256):
            try:
                q, peer = s.recvfrom(512)
            except (BlockingIOError, InterruptedError):
                break
            count += 1
            r = reply_for(q)
            if r is None:
                continue
            if delay <= 0:
                try:
                    s.sendto(r, peer)
                except OSError:
                    pass
            else:
                pending.append((time.monotonic() + delay, r, peer))
    with open(countfile, "w") as f:
        f.write("%d\n" % count)


if __name__ == "__main__":
    main()
