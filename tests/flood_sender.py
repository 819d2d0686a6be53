"""A hostile sender for tests/test_flood.py, run inside the attacker's network namespace.

Usage: python flood_sender.py dhcp|tftp|http JSON_ARGS. Prints one JSON line of what it
sent. Each kind runs in its own process (the test starts them side by side), so
the flood uses both CPUs the way a real attacker with several machines would. Every
datagram is made from a seeded RNG: a run can be replayed exactly.

- dhcp: to the full server's port 67 and the proxy server's 67 and 4011: random bytes,
  the golden captures truncated and bit-flipped (never in chaddr, so no new clients
  exhaust the pool), option overload loops, split and zero-length options.
- tftp: to port 69: random bytes, truncated RRQs, absurd options (blksize 65464 and
  windowsize 65535, huge tsize and timeout, options repeated hundreds of times), WRQs,
  traversal names, stray DATA/ACK/ERROR. To the transfer ports (learnt from the
  OACKs that come back): ACKs from unknown TIDs, junk and stale ACKs from the right one.
  Plus `confirm` hostile transfers per source that ACK their OACK and then stall.
- http: `count` malformed requests over TCP, `concurrency` at a time.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "dhcp"
CHADDR = range(28, 44)


def _paced(total: int, seconds: float):
    """Yield i for i in range(total), sleeping so that the whole takes about `seconds`."""
    start = time.monotonic()
    for i in range(total):
        if i % 200 == 0:
            ahead = start + seconds * i / total - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        yield i


# ------------------------------------------------------------------ dhcp

def _opts(*pairs: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([c, len(v)]) + v for c, v in pairs)


def _header(mac: bytes, xid: int, sname: bytes = b"", file: bytes = b"") -> bytes:
    return (struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4), bytes(4), bytes(4))
            + mac.ljust(16, b"\0") + sname.ljust(64, b"\0")[:64] + file.ljust(128, b"\0")[:128] + b"\x63\x82\x53\x63")


def dhcp_crafted(rnd: random.Random) -> list[bytes]:
    mac = bytes.fromhex("02feed000001")
    pxe = b"PXEClient:Arch:00000:UNDI:002001"
    out = [
        # option overload loops: 52 points at file and sname, which hold 52 again, and no END
        _header(mac, 1, sname=_opts((52, b"\x03")) + b"\x34", file=_opts((52, b"\x03"))) + _opts((53, b"\x01"), (52, b"\x03")),
        _header(mac, 2, file=_opts((52, b"\x01")) * 40) + _opts((52, b"\x01"), (53, b"\x01")) + b"\xff",
        _header(mac, 3) + _opts((52, b"\x07"), (53, b"\x01")) + b"\xff",  # overload value out of range
        _header(mac, 4) + _opts((52, b""), (53, b"\x01")) + b"\xff",  # zero-length overload
        # zero-length options
        _header(mac, 5) + _opts((53, b""), (60, b""), (93, b""), (55, b""), (61, b"")) + b"\xff",
        _header(mac, 6) + _opts((53, b"\x01"), (60, b""), (77, b""), (97, b""), (93, b"")) + b"\xff",
        # split options (RFC 3396: concatenated), one of them split into 1-byte pieces
        _header(mac, 7) + _opts((53, b"\x01"), *[(60, pxe[i:i + 1]) for i in range(len(pxe))]) + b"\xff",
        _header(mac, 8) + _opts((53, b"\x01"), (53, b"\x01")) + b"\xff",  # 53 twice: length 2
        _header(mac, 9) + _opts((53, b"\x01"), *[(93, b"\x00")] * 3) + b"\xff",  # 93 split to odd length
        _header(mac, 10) + _opts((53, b"\x01"), (57, b"\x00\x10")) + b"\xff",  # max size below 576
        _header(mac, 11) + _opts((53, b"\x01"), (55, bytes(range(256))[:255])) + b"\xff" + b"\0" * 600,
        _header(mac, 12) + bytes([53, 200]) + b"\x01",  # length past the end
        _header(mac, 13) + b"\x00" * 1000,  # only pads, no END
        _header(mac, 14) + _opts((53, b"\x63")) + b"\xff",  # unknown message type
        _header(mac, 15)[:-4] + b"\x63\x82\x53\x64" + b"\xff",  # bad cookie
    ]
    bad_hlen = bytearray(_header(mac, 16) + _opts((53, b"\x01")) + b"\xff")
    bad_hlen[2] = 99
    out.append(bytes(bad_hlen))
    reply = bytearray(_header(mac, 17) + _opts((53, b"\x02")) + b"\xff")
    reply[0] = 2  # a BOOTREPLY sent to the server
    out.append(bytes(reply))
    return out


def dhcp(args: dict) -> dict:
    rnd = random.Random(args.get("seed", 13))
    goldens = [bytes.fromhex(p.read_text().strip()) for p in sorted(GOLDEN.glob("*-in-*.hex"))]
    crafted = dhcp_crafted(rnd)
    targets = [tuple(t) for t in args["targets"]]  # [host, port]
    socks = []
    for src in args["sources"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    sent = {"random": 0, "truncated": 0, "bitflip": 0, "crafted": 0, "golden": 0, "errors": 0}
    for i in _paced(args["count"], args["seconds"]):
        kind = i % 10
        if kind < 2:
            pkt, k = rnd.randbytes(rnd.randrange(0, 700)), "random"
        elif kind < 4:
            g = rnd.choice(goldens)
            pkt, k = g[: rnd.randrange(0, len(g))], "truncated"
        elif kind < 7:
            g = bytearray(rnd.choice(goldens))
            for _ in range(rnd.randrange(1, 9)):
                pos = rnd.randrange(len(g))
                while pos in CHADDR:
                    pos = rnd.randrange(len(g))
                g[pos] ^= 1 << rnd.randrange(8)
            pkt, k = bytes(g), "bitflip"
        elif kind < 9:
            pkt, k = crafted[i % len(crafted)], "crafted"
        else:
            pkt, k = rnd.choice(goldens), "golden"
        try:
            socks[i % len(socks)].sendto(pkt, targets[i % len(targets)])
            sent[k] += 1
        except OSError:
            sent["errors"] += 1
    sent["total"] = sum(v for k, v in sent.items() if k != "errors")
    return sent


# ------------------------------------------------------------------ tftp

def _rrq(name: str, *options: tuple[str, str], op: int = 1, mode: str = "octet") -> bytes:
    body = name.encode() + b"\0" + mode.encode() + b"\0"
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options)
    return struct.pack("!H", op) + body


def tftp_requests(files: list[str]) -> list[bytes]:
    f = files[0]
    return [
        _rrq(f, ("blksize", "65464"), ("windowsize", "65535")),
        _rrq(f, ("blksize", "65465"), ("windowsize", "65536"), ("tsize", "0")),
        _rrq(f, ("tsize", "9" * 40), ("timeout", "99999999999999")),
        _rrq(f, ("timeout", "0"), ("blksize", "7")),
        _rrq(f, ("timeout", "256"), ("blksize", "-1"), ("windowsize", "0")),
        _rrq(f, *[("blksize", str(8 + i)) for i in range(150)]),  # repeated options
        _rrq(f, *[("x" * 20 + str(i), "y" * 20) for i in range(30)]),  # many unknown options
        _rrq(f, ("blksize", "")),
        _rrq(f, ("blksize", "1e9")),
        _rrq(f, ("windowsize", "65535"), ("blksize", "8")),
        _rrq(f, mode="mail"),
        _rrq(f, op=2),  # WRQ
        _rrq("../../../../etc/passwd"),
        _rrq("/etc/shadow"),
        _rrq("images/demo/../../../../etc/passwd"),
        _rrq("images/%2e%2e/x"),
        _rrq("a" * 1400),
        _rrq("nope/does-not-exist", ("tsize", "0")),
        struct.pack("!HH", 3, 1) + b"x" * 512,  # stray DATA
        struct.pack("!HH", 4, 1),  # stray ACK
        struct.pack("!HH", 5, 0) + b"boom\0",  # stray ERROR
        struct.pack("!H", 6) + b"blksize\x00512\x00",  # stray OACK
        b"\x00\x01" + b"\xff" * 50 + b"\x00octet\x00",  # undecodable name
        b"\x00\x01f\x00octet",  # unterminated
        b"\x00\x01\x00\x00",
    ]


def tftp(args: dict) -> dict:
    rnd = random.Random(args.get("seed", 69))
    server = args["server"]
    reqs = tftp_requests(args["files"])
    hostile = reqs[1]
    socks = []
    for src in args["sources"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    tids: list[tuple[str, int]] = []  # transfer ports the server answered from
    sent = {"port69": 0, "random69": 0, "unknown_tid": 0, "junk_tid": 0, "random_port": 0, "confirm": 0,
            "errors": 0, "replies": 0}

    def drain() -> None:
        for s in socks:
            for _ in range(200):
                try:
                    _, peer = s.recvfrom(70000)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                sent["replies"] += 1
                if peer[1] != 69 and len(tids) < 4096:
                    tids.append(peer)

    # stalled, confirmed transfers: `confirm` per source ACK their OACK and never more
    stalled = []
    for s in socks:
        for _ in range(args.get("confirm", 0)):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((s.getsockname()[0], 0))
            c.settimeout(3)
            c.sendto(hostile, (server, 69))
            try:
                data, tid = c.recvfrom(100)
                if data[:2] == b"\x00\x06":
                    c.sendto(b"\x00\x04\x00\x00", tid)
                    sent["confirm"] += 1
            except OSError:
                pass
            stalled.append(c)

    for i in _paced(args["count"], args["seconds"]):
        if i % 500 == 0:
            drain()
        s = socks[i % len(socks)]
        kind = i % 20
        try:
            if kind < 8:
                s.sendto(reqs[i % len(reqs)], (server, 69))
                sent["port69"] += 1
            elif kind < 10:
                g = bytearray(reqs[rnd.randrange(len(reqs))])
                if rnd.random() < 0.5:
                    g = g[: rnd.randrange(len(g) + 1)]
                else:
                    g[rnd.randrange(len(g))] ^= 1 << rnd.randrange(8)
                s.sendto(bytes(g) if rnd.random() < 0.7 else rnd.randbytes(rnd.randrange(0, 600)), (server, 69))
                sent["random69"] += 1
            elif kind < 14 and tids:
                tid = tids[rnd.randrange(len(tids))]
                other = socks[(i + 1) % len(socks)]  # not the TID's own client: ERROR 5 back
                other.sendto(struct.pack("!HH", 4, rnd.randrange(65536)), tid)
                sent["unknown_tid"] += 1
            elif kind < 18 and tids:
                tid = tids[rnd.randrange(len(tids))]
                junk = rnd.choice([struct.pack("!HH", 4, rnd.randrange(65536)), rnd.randbytes(rnd.randrange(0, 1500)),
                                   struct.pack("!HH", 3, 1) + b"z" * 100, b"\x00\x04", b""])
                s.sendto(junk, tid)  # from some attacker socket, right TID or not
                sent["junk_tid"] += 1
            else:
                s.sendto(struct.pack("!HH", 4, 0), (server, rnd.randrange(32768, 61000)))
                sent["random_port"] += 1
        except OSError:
            sent["errors"] += 1
    drain()
    for c in stalled:
        c.close()
    sent["total"] = sum(v for k, v in sent.items() if k not in ("errors", "replies"))
    sent["tids_learnt"] = len(tids)
    return sent


# ------------------------------------------------------------------ http

def http_requests(host: str) -> list[bytes]:
    h = f"Host: {host}\r\n".encode()
    root = b"/images/demo/rootfs.squashfs"
    ranges = [b"bytes=-5-3", b"bytes=99999999999999999999999-", b"bytes=5-1", b"bytes=-0", b"bytes=a-b",
              b"bytes=" + b"0-0," * 2000 + b"1-1", b"bytes=-99999999999999999999", b"bytes=0--1", b"pages=1-2",
              b"bytes=18446744073709551615-18446744073709551616", b"bytes=--1", b"bytes= 1 - 2 "]
    traversal = [b"/../../etc/passwd", b"/images/demo/../../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd",
                 b"/images/%2E%2E/%2E%2E/etc/passwd", b"/images/demo/..%2f..%2fetc%2fpasswd", b"/%252e%252e/etc/passwd",
                 b"/images\\..\\..\\etc\\passwd", b"//etc/passwd", b"/images/demo/%00", b"/images/./demo/vmlinuz",
                 b"/images/demo/vmlinuz%00.txt", b"/..;/etc/passwd", b"/images/demo/\xc0\xae\xc0\xae/x"]
    out = [
        b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /\r\n\r\n", b" / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200,  # a TLS hello
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n" + h + b"\r\n",  # request line too long
        b"GET / HTTP/1.1\r\n" + h + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n",  # header too long
        b"GET / HTTP/1.1\r\n" + h + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n",  # many headers
        b"GET / HTTP/1.1\r\n" + h + b"Content-Length: -1\r\n\r\n",
        b"POST /api/v1/nodes HTTP/1.1\r\n" + h + b"Content-Length: 99999999999\r\n\r\n{",
        b"POST /api/v1/nodes/52:54:00:00:00:01/events HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"Bad Header\r\n\r\n", b"GET / HTTP/1.1\r\n" + h + b"\x01\x02: x\r\n\r\n",
        b"DELETE /api/v1/nodes/x HTTP/1.1\r\n" + h + b"\r\n", b"BREW /pot HTTP/1.1\r\n" + h + b"\r\n",
    ]
    out += [b"GET " + t + b" HTTP/1.1\r\n" + h + b"\r\n" for t in traversal]
    out += [b"GET " + root + b" HTTP/1.1\r\n" + h + b"Range: " + r + b"\r\n\r\n" for r in ranges]
    return out


def _one_http(host: str, port: int, req: bytes, mode: str) -> str:
    try:
        with socket.create_connection((host, port), timeout=5) as c:
            if mode == "half":  # a request cut in the middle, then gone
                c.sendall(req[: max(1, len(req) // 2)])
                return "half"
            c.sendall(req)
            if mode == "leave":  # read a little of a big file, then reset the connection
                c.recv(4096)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return "left"
            data = c.recv(64)
            return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
    except OSError as e:
        return type(e).__name__


def http(args: dict) -> dict:
    host, port, count = args["host"], args["port"], args["count"]
    reqs = http_requests(host)
    big = f"GET /images/demo/rootfs.squashfs HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    jobs = []
    for i in range(count):
        if i % 10 == 0:
            jobs.append((big, "leave"))
        elif i % 10 == 1:
            jobs.append((reqs[i % len(reqs)], "half"))
        else:
            jobs.append((reqs[i % len(reqs)], "full"))
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(args.get("concurrency", 16)) as pool:
        for status in pool.map(lambda j: _one_http(host, port, *j), jobs):
            counts[status] = counts.get(status, 0) + 1
    return {"total": count, "status": counts}


if __name__ == "__main__":
    kind, raw = sys.argv[1], sys.argv[2]
    result = {"dhcp": dhcp, "tftp": tftp, "http": http}[kind](json.loads(raw))
    print(json.dumps(result), flush=True)
