"""`ramboot bench storm`: N PXE clients booting at once against a real `ramboot serve`.

The orchestrator (run as root) makes two namespaces joined by a veth pair
(`rbb<random>-s` with the server on 10.77.0.1/16, `rbb<random>-c` for the
clients), writes a data directory with a synthetic image of the given size and
a config in full DHCP mode, starts `ramboot serve` in the server namespace and
then this same module in the client namespace as the load generator.

Each simulated client does the network side of a whole BIOS PXE -> iPXE boot:

1. DHCP DISCOVER/REQUEST with the PXE vendor class, arch 0 and its own MAC;
2. the TFTP fetch of the boot program it was given (lock-step, blksize 1456,
   like a PXE ROM), compared with the file;
3. a second DHCP exchange as iPXE (user class `iPXE`), which must hand it the
   http URL of its script (no chainload loop);
4. the iPXE script over HTTP, then the kernel, initrd and root image it names,
   each compared byte for byte with the image's file, which every generator
   process checks against the manifest's sha256 once at start (a memcmp per
   chunk instead of a sha256: as strong, 5-20x cheaper here); `ramboot.sha256=` on
   the kernel command line must match the manifest;
5. the `booted` report: `POST /api/v1/nodes/{mac}/events`, from its leased address.

All clients share one interface: DHCP goes out of one socket bound to port 68
(distinct chaddr, broadcast flag set), and the replies are demultiplexed by
xid. The leased addresses are made local in the client namespace with one
"AnyIP" route (`ip route add local POOL dev lo`), so each client's TFTP and
HTTP traffic really comes from its own leased address; the server's namespace
routes the pool via the client namespace's address (one ARP entry, not N).

The report: completion time p50/p99/max and per phase, failures with reasons,
server CPU seconds and peak RSS (from /proc), the generator's CPU, the
machine's busy share, the aggregate transfer rate against the link bound (raw
TCP over the same veth into the generator processes, nothing checked),
measured in the same run, and which side bound the storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from ..lab.impair import Impairment
from ..macaddr import mac_from_bytes
from .util import Child

POOL_NET = "10.77.16.0/20"
POOL = ("10.77.16.0", "10.77.31.254")
TFTP_PORT = 69
HTTP_PORT = 80
BLAST_PORT = 19999
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

PXE_VENDOR = b"PXEClient:Arch:00000:UNDI:002001"
PARAM_REQUEST = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60,
                       66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135, 175])
# PXE 2.1 DHCP timeouts (seconds before the next DISCOVER), then give up
DHCP_TIMEOUTS = (4, 8, 16, 32)
REQUEST_TIMEOUTS = (4, 4)  # then DISCOVER again
# A PXE ROM that gets no DHCP answer gives up after those four tries (60 s) and the
# firmware moves on; a BIOS set to retry the boot (SeaBIOS `reboot-timeout`, a BMC's
# "retry network boot") starts the whole boot again. The simulated client does the same,
# this many times: the level where a firmware that gave up can be retried.
BOOT_RETRIES = 2


# =========================================================================
# The load generator (runs inside the client namespace)
# =========================================================================


@dataclass
class ClientResult:
    mac: str
    ok: bool = False
    error: str = ""
    ip: str = ""
    start: float = 0.0
    total: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    bytes: int = 0
    dhcp_retries: int = 0
    tftp_retries: int = 0
    restarts: int = 0  # whole boots started over (the firmware's retry) after a server died
    boot_retries: int = 0  # the same count, under the name the soak reads
    servers: list[str] = field(default_factory=list)  # which server answered each DHCP ACK


class Failed(Exception):
    pass


class DhcpMux:
    """One UDP socket on port 68 shared by every client; replies go to their xid."""

    def __init__(self, ifname: str):
        from ..proto import dhcp_codec as D

        self.D = D
        self.loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            except OSError:
                pass
        s.bind(("0.0.0.0", 68))
        s.setblocking(False)
        self.sock = s
        self.waiters: dict[int, tuple[bytes, set[int], asyncio.Future]] = {}
        self.loop.add_reader(s.fileno(), self._readable)
        self.stray = 0

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        D = self.D
        for _ in range(256):
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            try:
                pkt = D.decode(data)
            except D.DhcpDecodeError:
                self.stray += 1
                continue
            w = self.waiters.get(pkt.xid)
            if w is None or pkt.op != D.BOOTREPLY or pkt.chaddr[:6] != w[0] or pkt.msg_type not in w[1] or w[2].done():
                self.stray += 1
                continue
            w[2].set_result(pkt)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, ("255.255.255.255", 67))
        except (BlockingIOError, InterruptedError):
            pass  # the retransmission timer covers it, as on a real wire

    async def exchange(
        self, mac: bytes, xid: int, data: bytes, want: set[int], res: ClientResult, timeouts=DHCP_TIMEOUTS
    ):
        fut = self.loop.create_future()
        self.waiters[xid] = (mac, want, fut)
        try:
            for i, t in enumerate(timeouts):
                if i:
                    res.dhcp_retries += 1
                self._send(data)
                try:
                    # RFC 2131 4.1: each wait randomised by -1..+1 s, so a storm's retries do not stay in step
                    return await asyncio.wait_for(asyncio.shield(fut), t + random.uniform(-1, 1))
                except TimeoutError:
                    continue
            raise GaveUp(f"dhcp: no reply to message type {data[242] if len(data) > 242 else '?'}"
                         f" after {sum(timeouts)} s")
        finally:
            self.waiters.pop(xid, None)

    def packet(self, mac: bytes, xid: int, msg: int, ipxe: bool, extra: dict | None = None) -> bytes:
        D = self.D
        opts = {
            D.Opt.MESSAGE_TYPE: bytes([msg]),
            D.Opt.MAX_MESSAGE_SIZE: struct.pack("!H", 1472),
            D.Opt.PARAM_REQUEST: PARAM_REQUEST,
            D.Opt.VENDOR_CLASS: PXE_VENDOR,
            D.Opt.CLIENT_ARCH: b"\x00\x00",
            D.Opt.CLIENT_NDI: b"\x01\x02\x01",
            D.Opt.CLIENT_UUID: b"\x00" + hashlib.md5(mac).digest(),
        }
        if ipxe:
            opts[D.Opt.USER_CLASS] = b"iPXE"
            opts[D.Opt.IPXE_ENCAP] = bytes([1, 1, 1, 19, 1, 1])  # priority, http feature
        if extra:
            opts.update(extra)
        pkt = D.DhcpPacket(op=D.BOOTREQUEST, xid=xid, flags=D.FLAG_BROADCAST, chaddr=mac, options=opts)
        return D.encode(pkt, max_message=1472)

    async def dora(self, mac: bytes, ipxe: bool, res: ClientResult):
        """DISCOVER, OFFER, REQUEST, ACK; returns the ACK. A REQUEST that gets no answer (the
        server that offered died) is sent a few times, then the client starts over with a
        DISCOVER (RFC 2131 §4.4.1), as PXE ROMs and iPXE do."""
        D = self.D
        for _attempt in range(4):
            xid = random.getrandbits(32)
            offer = await self.exchange(mac, xid, self.packet(mac, xid, D.MsgType.DISCOVER, ipxe),
                                        {D.MsgType.OFFER}, res)
            req = self.packet(mac, xid, D.MsgType.REQUEST, ipxe, {
                D.Opt.REQUESTED_IP: D.socket_aton(offer.yiaddr),
                D.Opt.SERVER_ID: offer.options[D.Opt.SERVER_ID],
            })
            try:
                ack = await self.exchange(mac, xid, req, {D.MsgType.ACK, D.MsgType.NAK}, res, REQUEST_TIMEOUTS)
            except Failed:
                res.dhcp_retries += 1
                continue
            if ack.msg_type == D.MsgType.ACK:
                return ack
            res.dhcp_retries += 1
        raise Failed("dhcp: no ACK after four DISCOVERs")


class TftpFetch:
    """One RRQ (lock-step, or windowed) on a bare socket driven by `add_reader`.

    Per DATA: one callback, one recv, one send. One timer per transfer, re-armed lazily
    on expiry, so a packet costs no future, task or timer (asyncio's datagram transport,
    a queue and a `wait_for` per packet made the generator, not the server, the bound).
    """

    def __init__(self, local_ip: str, server: str, name: str, blksize: int, windowsize: int, res: ClientResult):
        from ..proto import tftp_core

        self.T = tftp_core
        self.loop = asyncio.get_running_loop()
        self.server, self.name, self.res = (server, TFTP_PORT), name, res
        self.want_blk, self.want_win = blksize, windowsize
        self.blk, self.win = 512, 1
        self.expected = 1
        self.chunks: list[bytes] = []
        self.peer: tuple | None = None
        self.tries = 0
        self.last = time.monotonic()
        self.done: asyncio.Future = self.loop.create_future()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.bind((local_ip, 0))
        except OSError:
            s.close()
            raise
        self.sock = s
        self.last_sent = b""

    async def run(self) -> bytes:
        T = self.T
        opts = {"tsize": "0"}
        if self.want_blk != 512:
            opts["blksize"] = str(self.want_blk)
        if self.want_win > 1:
            opts["windowsize"] = str(self.want_win)
        self._send(T.Request(T.RRQ, self.name, "octet", opts).encode(), self.server)
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self.timer = self.loop.call_later(1.0, self._tick)
        try:
            return await self.done
        finally:
            self.timer.cancel()
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _send(self, data: bytes, to: tuple) -> None:
        self.last_sent = data
        try:
            self.sock.sendto(data, to)
        except OSError:
            pass  # a full buffer, an ICMP error pending: the retransmission timer covers it

    def _fail(self, msg: str) -> None:
        if not self.done.done():
            self.done.set_exception(Failed(f"tftp: {self.name}: {msg}"))

    def _tick(self) -> None:
        if self.done.done():
            return
        idle = time.monotonic() - self.last
        if idle < 1.0:
            self.timer = self.loop.call_later(1.0 - idle, self._tick)
            return
        self.tries += 1
        self.res.tftp_retries += 1
        if self.tries > 8:
            self._fail(f"timed out at block {self.expected}")
            return
        self._send(self.last_sent, self.peer or self.server)
        self.last = time.monotonic()
        self.timer = self.loop.call_later(1.0, self._tick)

    def _readable(self) -> None:
        T = self.T
        while not self.done.done():
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable and the like: the timer resends
                return
            if self.peer is None:
                self.peer = addr
            elif addr != self.peer:
                with contextlib.suppress(OSError):
                    self.sock.sendto(T.Error(T.ErrorCode.UNKNOWN_TID, "unknown transfer id").encode(), addr)
                continue
            if data[:2] == b"\x00\x03" and len(data) >= 4:  # DATA, the hot path
                block = (data[2] << 8) | data[3]
                if block != (self.expected & 0xFFFF):
                    # out of order (a window lost a packet): ack what we have, RFC 7440 §4
                    self._send(struct.pack("!HH", 4, (self.expected - 1) & 0xFFFF), addr)
                    continue
                payload = data[4:]
                self.chunks.append(payload)
                self.expected += 1
                self.tries = 0
                self.last = time.monotonic()
                final = len(payload) < self.blk
                if final or (self.expected - 1) % self.win == 0:
                    self._send(struct.pack("!HH", 4, block), addr)
                if final:
                    self.done.set_result(b"".join(self.chunks))
                continue
            try:
                pkt = T.parse(data)
            except T.MalformedPacket as e:
                self._fail(f"malformed packet: {e}")
                return
            if isinstance(pkt, T.Error):
                self._fail(f"error {pkt.code} {pkt.message}")
                return
            if isinstance(pkt, T.OAck):
                self.blk = int(pkt.options.get("blksize", 512))
                self.win = int(pkt.options.get("windowsize", 1))
                self.tries = 0
                self.last = time.monotonic()
                self._send(T.Ack(0).encode(), addr)


class HttpConn(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection from one client's leased address.

    Bodies are received with recv_into into one buffer shared by the whole process
    (the loop calls get_buffer, recv_into and buffer_updated back to back, so one
    buffer is enough) and compared there, in place, with the reference bytes: no
    allocation, copy or hash per chunk.
    """

    buf = bytearray(1 << 20)
    view = memoryview(buf)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.done: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the server closed the connection mid-response"))

    def get_buffer(self, sizehint: int):
        return self.view

    def buffer_updated(self, n: int) -> None:
        if self.done is None or self.done.done():
            return
        if self.length >= 0:
            self._body(self.buf, 0, n)
            return
        self.head += self.view[:n]
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 65536:
                self._fail(Failed("http: response header over 64 KiB"))
            return
        if self._header(bytes(self.head[:end])):
            self._body(self.head, end + 4, len(self.head) - end - 4)

    def _header(self, raw: bytes) -> bool:
        lines = raw.decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail(Failed(f"http: bad status line {lines[0][:80]!r}"))
            return False
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" not in headers:
            self._fail(Failed("http: response without Content-Length"))
            return False
        self.length = int(headers["content-length"])
        self.keep = headers.get("connection", "").lower() != "close"
        self.location = headers.get("location", "")
        if self.status != 200:
            self.ref = None  # an error page: keep it for the message
        elif self.ref is not None and self.length != len(self.ref):
            self._fail(Failed(f"http: Content-Length {self.length}, the file has {len(self.ref)} bytes"))
            return False
        return True

    def _body(self, data: bytearray, start: int, n: int) -> None:
        got = self.got
        if got + n > self.length:
            self._fail(Failed("http: more bytes than Content-Length"))
            return
        if self.ref is None:
            self.body += data[start:start + n]
        elif not data.startswith(self.ref[got:got + n], start, start + n):  # a memcmp
            self._fail(Failed(f"http: the body differs from the file within bytes {got}-{got + n}"))
            return
        self.got = got + n
        if self.got == self.length:
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    async def request(self, method: str, url, body: bytes, ref: memoryview | None) -> tuple[int, bytes, int]:
        """(status, body or b"" when compared with `ref`, body length)."""
        if self.transport.is_closing():  # the server went away since the last response
            raise ConnectionResetError("the server closed the connection")
        self.head, self.length, self.got, self.body, self.ref = bytearray(), -1, 0, bytearray(), ref
        self.done = asyncio.get_running_loop().create_future()
        ctype = "Content-Type: application/json\r\n" if body else ""
        path = url.path + (f"?{url.query}" if url.query else "")
        self.transport.write(f"{method} {path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n{ctype}"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.done
        return self.status, bytes(self.body), self.got


class HttpClient:
    """A client's HTTP: one keep-alive connection per server, from its leased address."""

    def __init__(self, local_ip: str, timeout: float, res: ClientResult):
        self.ip, self.timeout, self.res = local_ip, timeout, res
        self.conns: dict[str, HttpConn] = {}
        self.location = ""  # the last response's Location (a redirect to a seeding peer)

    async def fetch(self, url: str, ref: memoryview | None = None, method: str = "GET",
                    body: bytes = b"") -> tuple[int, bytes]:
        from urllib.parse import urlsplit

        u = urlsplit(url)
        conn = self.conns.get(u.netloc)
        if conn is None or conn.closed or conn.transport.is_closing():
            loop = asyncio.get_running_loop()
            _, conn = await asyncio.wait_for(
                loop.create_connection(HttpConn, u.hostname, u.port or 80, local_addr=(self.ip, 0)), 10)
            self.conns[u.netloc] = conn
        try:
            status, data, n = await asyncio.wait_for(conn.request(method, u, body, ref), self.timeout)
        except BaseException:
            self.conns.pop(u.netloc, None)
            conn.transport.close()
            raise
        self.res.bytes += n
        self.location = conn.location
        if not conn.keep:
            self.conns.pop(u.netloc, None)
            conn.transport.close()
        return status, data

    def close(self) -> None:
        for c in self.conns.values():
            c.transport.close()


_KERNEL = re.compile(r"^kernel\s+(.*)$", re.M)
_INITRD = re.compile(r"^initrd\s+(.*)$", re.M)


def alternatives(line: str, verb: str) -> list[tuple[str, list[str]]]:
    """`kernel URL1 ARGS || kernel URL2 ARGS`: each (url, args), in the order iPXE tries them."""
    out = []
    for alt in (verb + " " + line).split(" || "):
        words = alt.split()
        if len(words) >= 2 and words[0] == verb:
            out.append((words[1], words[2:]))
    return out


async def get_any(http: HttpClient, urls: list[str], ref: memoryview, what: str) -> None:
    """The first of `urls` that serves exactly the reference bytes (iPXE's `||`, the initramfs's list)."""
    errors = []
    for url in urls:
        try:
            status, body = await http.fetch(url, ref)
            if status == 200:
                return
            errors.append(f"{url}: status {status} {body[:80]!r}")
        except (Failed, OSError, TimeoutError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}"[:160])
    raise Failed(f"http: {what}: every URL failed: {'; '.join(errors)}")


async def get_root(http: HttpClient, urls: list[str], ref: memoryview, report) -> None:
    """The initramfs's root download with seeding: a redirect to a peer is followed; a peer
    that fails or sends other bytes is reported (`seed-refused`) and the server asked again,
    itself (`?seed=0`); the download is reported (`download-done`), which frees the peer's slot."""
    errors = []
    for url in urls:
        try:
            status, body = await http.fetch(url, ref)
            got = url
            if status == 302 and http.location:
                peer = http.location
                try:
                    status, body = await http.fetch(peer, ref)
                    got = peer
                except (Failed, OSError, TimeoutError) as e:
                    status, body = 0, str(e)[:100].encode()
                if status != 200:
                    await report("seed-refused", {"url": peer, "reason": body[:100].decode(errors="replace")})
                    got = url + "?seed=0"
                    status, body = await http.fetch(got, ref)
            if status == 200:
                await report("download-done", {"url": got, "bytes": len(ref)})
                return
            errors.append(f"{url}: status {status} {body[:80]!r}")
        except (Failed, OSError, TimeoutError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}"[:160])
    raise Failed(f"http: rootfs: every URL failed: {'; '.join(errors)}")


SEED_PORT = 8790  # ramboot.server.seeding.SEED_PORT (not imported: the generator loads no server code)
_SEEDS: list[asyncio.Server] = []  # this process's seeding clients
_SEED_SEEN = [0.0]  # when a seeding client last got a request


async def start_seeding(ip: str, path: str) -> None:
    """Serve the root image from `ip`:SEED_PORT as a booted node does (its RAM copy: here the
    file the generator already checked, mapped); only GET/HEAD of /images/bench/rootfs.squashfs."""
    import mmap

    with open(path, "rb") as f:
        data = memoryview(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
    size = len(data)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                _SEED_SEEN[0] = time.monotonic()
                method, target = head.split(b" ", 2)[:2]
                if target.split(b"?")[0] != b"/images/bench/rootfs.squashfs":
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
                if method == b"GET":
                    for i in range(0, size, 1 << 20):
                        writer.write(data[i:i + (1 << 20)])
                        await writer.drain()
                _SEED_SEEN[0] = time.monotonic()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    _SEEDS.append(await asyncio.start_server(handle, ip, SEED_PORT, backlog=64))


def references(p: dict) -> dict[str, memoryview]:
    """The bytes every download must equal: the image's files and the boot programs, mapped
    read-only (the page cache the server sends from, no copy), each checked once here
    against the manifest's sha256. A byte-for-byte compare with them is as strong as
    hashing what arrives (stronger: no collisions) and costs a memcmp instead of a sha256."""
    import mmap

    refs = {}
    for name, (path, sha) in p["references"].items():
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            view = memoryview(mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)) if size else memoryview(b"")
        if hashlib.sha256(view).hexdigest() != sha:
            raise SystemExit(f"storm: {path} does not match its sha256 {sha}")
        refs[name] = view
    return refs


async def _boot_attempt(idx: int, mac: bytes, macs: str, p: dict, refs: dict, mux: DhcpMux, res: ClientResult,
                        phase) -> None:
    from ..proto import dhcp_codec as D

    # 1. the PXE ROM's DHCP
    ack = await mux.dora(mac, False, res)
    if res.ip and ack.yiaddr != res.ip:
        raise Failed(f"dhcp: address changed across servers ({res.ip} -> {ack.yiaddr})")
    res.ip = ack.yiaddr
    res.servers.append(ack.server_id or "?")
    bootfile = ack.boot_file
    nxt = ack.siaddr if ack.siaddr != D.ZERO_IP else (ack.ip_option(D.Opt.SERVER_ID) or p["server"])
    if not bootfile or bootfile.startswith("http"):
        raise Failed(f"dhcp: PXE client was given {bootfile!r}, not a TFTP boot program")
    phase("dhcp")
    # 2. the boot program over TFTP
    data = await TftpFetch(res.ip, nxt, bootfile, p["blksize"], p["windowsize"], res).run()
    res.bytes += len(data)
    want = refs.get(f"loaders/{bootfile}")
    if want is not None and data != want:
        raise Failed(f"tftp: {bootfile}: {len(data)} bytes that differ from the file's {len(want)}")
    phase("tftp")
    # 3. iPXE's own DHCP: must get the script URL straight away
    ack2 = await mux.dora(mac, True, res)
    res.servers.append(ack2.server_id or "?")
    script_url = ack2.boot_file
    if not script_url.startswith("http://"):
        raise Failed(f"dhcp: iPXE was given {script_url!r}, not its http script (chainload loop)")
    if ack2.yiaddr != res.ip:
        raise Failed(f"dhcp: address changed between PXE ({res.ip}) and iPXE ({ack2.yiaddr})")
    phase("dhcp-ipxe")
    # 4. HTTP: script, kernel, initrd, root, each falling back as the node would
    http = HttpClient(res.ip, p["timeout"], res)
    try:
        status, body = await http.fetch(script_url)
        if status != 200:
            raise Failed(f"http: script: status {status}")
        script = body.decode()
        km, im = _KERNEL.search(script), _INITRD.search(script)
        if not km or not im:
            raise Failed(f"http: script has no kernel/initrd line: {script[:200]!r}")
        kernels, initrds = alternatives(km.group(1), "kernel"), alternatives(im.group(1), "initrd")
        args = kernels[0][1]
        urls = [a.split("=", 1)[1] for a in args if a.startswith("ramboot.url=")]
        servers = [a.split("=", 1)[1] for a in args if a.startswith("ramboot.server=")]
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        root_sha = kv.get("ramboot.sha256")
        if not urls or not root_sha:
            raise Failed("http: kernel command line lacks ramboot.url or ramboot.sha256")
        if root_sha != p["manifest"]["rootfs.squashfs"]:
            raise Failed("http: ramboot.sha256 on the command line differs from the manifest")
        phase("script")
        await get_any(http, [u for u, _ in kernels], refs["vmlinuz"], "kernel")
        await get_any(http, [u for u, _ in initrds], refs["initrd.img"], "initrd")
        phase("kernel+initrd")
        # the initramfs's DHCP would come here; its root download tries ramboot.url= in order
        report_to = servers[0] if servers else f"http://{p['server']}"

        async def tell(stage: str, detail: dict) -> None:
            body = json.dumps({"stage": stage, "detail": detail}).encode()
            with contextlib.suppress(Failed, OSError, TimeoutError):
                await http.fetch(f"{report_to}/api/v1/nodes/{macs}/events", method="POST", body=body)

        if p.get("seed"):
            await get_root(http, urls, refs["rootfs.squashfs"], tell)
        else:
            await get_any(http, urls, refs["rootfs.squashfs"], "rootfs")
        phase("rootfs")
        # 5. the boot report, from the leased address, to the first server that takes it
        report = json.dumps({"stage": "booted", "detail": {"storm": idx}}).encode()
        for server in servers or [f"http://{p['server']}"]:
            try:
                status, body = await http.fetch(f"{server}/api/v1/nodes/{macs}/events", method="POST", body=report)
            except (Failed, OSError, TimeoutError):
                continue
            if status // 100 == 2:
                break
            raise Failed(f"api: booted report refused: {status} {body[:120]!r}")
        else:
            raise Failed("api: no server took the booted report")
        phase("report")
        if p.get("seed"):  # a booted node serves its verified root to its peers
            await start_seeding(res.ip, p["references"]["rootfs.squashfs"][0])
            await tell("seeding", {"sha256": root_sha, "port": SEED_PORT})
    finally:
        http.close()


class GaveUp(Failed):
    """The firmware's DHCP gave up: the boot as a whole may be retried (BOOT_RETRIES)."""


async def boot_one(idx: int, mac: bytes, p: dict, refs: dict, mux: DhcpMux, t_start: float) -> ClientResult:
    """One client's boot, started again (BOOT_RETRIES) when its firmware gives up or its server dies."""
    macs = mac_from_bytes(mac)
    res = ClientResult(macs)
    await asyncio.sleep(max(0.0, t_start - time.monotonic()))
    t0 = time.monotonic()
    res.start = t0
    mark = t0

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        res.phases[name] = round(now - mark, 4)
        mark = now

    attempts = p.get("boot_retries", BOOT_RETRIES) + 1
    for attempt in range(attempts):
        res.phases = {}
        try:
            await _boot_attempt(idx, mac, macs, p, refs, mux, res, phase)
            res.ok, res.error = True, ""
            break
        except Failed as e:
            res.error = str(e)
        except (TimeoutError, OSError) as e:
            res.error = f"{type(e).__name__}: {e}"[:300]
        except Exception as e:  # a bug in the generator must not hide the other clients
            res.error = f"generator: {type(e).__name__}: {e}"[:300]
            break
        if attempt + 1 < attempts:
            res.restarts += 1
            await asyncio.sleep(1.0)  # the firmware's pause before it tries the boot entry again
    res.boot_retries = res.restarts
    res.total = round(time.monotonic() - t0, 4)
    return res


class _Sink(asyncio.BufferedProtocol):
    """Counts what arrives, received into the generator's shared buffer like an HTTP body."""

    def __init__(self, total: list[int]):
        self.total = total
        self.closed = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int):
        return HttpConn.view

    def buffer_updated(self, n: int) -> None:
        self.total[0] += n

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def measure_bound(server: str, seconds: float = 2.0, conns: int = 4) -> float:
    """MB/s from the blaster over the veth into one generator process (recv_into, no compare)."""
    loop = asyncio.get_running_loop()
    total = [0]
    t0 = time.monotonic()
    sinks = [(await loop.create_connection(lambda: _Sink(total), server, BLAST_PORT)) for _ in range(conns)]
    await asyncio.sleep(seconds)
    for transport, _ in sinks:
        transport.close()
    return total[0] / 2**20 / (time.monotonic() - t0)


async def run_clients(p: dict) -> dict:
    """One generator process: either the link-bound probe or its share of the clients."""
    import resource

    if p.get("mode") == "bound":
        try:
            return {"bound_mb_s": await measure_bound(p["server"], p["bound_seconds"])}
        except OSError:
            return {"bound_mb_s": 0.0}
    # each client holds a TFTP socket, then one or two TCP connections
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    refs = references(p)
    mux = DhcpMux(p["ifname"])
    try:
        prefix = bytes.fromhex(p["mac_prefix"])
        start = time.monotonic() + (p["start_at"] - time.time())
        ramp, n, first, count = p["ramp"], p["n"], p["first"], p["count"]
        tasks = [
            boot_one(i, prefix + i.to_bytes(3, "big"), p, refs, mux, start + (ramp * i / n if ramp else 0.0))
            for i in range(first, first + count)
        ]
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        results = await asyncio.gather(*tasks)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - start
        # Seeding clients keep serving until the other generators' clients stop asking (3 s quiet).
        _SEED_SEEN[0] = max(_SEED_SEEN[0], time.monotonic())
        while _SEEDS and time.monotonic() - _SEED_SEEN[0] < 3.0:
            await asyncio.sleep(0.5)
    finally:
        mux.close()
        for srv in _SEEDS:
            srv.close()
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return {"wall": wall, "cpu_s": cpu, "stray_dhcp": mux.stray, "results": [asdict(r) for r in results]}


# =========================================================================
# The orchestrator
# =========================================================================


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[k]


def server_config(data_dir: Path, ifname: str, lease_time: int = 3600, address: str = "10.77.0.1",
                  db_url: str | None = None, name: str | None = None, clients: int = 0, seed: bool = True) -> str:
    """A full-mode config, without the TLS listener: the storm measures the boot path (DHCP,
    TFTP, script, kernel, initrd, root), and its clients report `booted` over plain HTTP
    (`overlay_over_http`), not what 3,000 TLS handshakes cost. With `clients`, TFTP's caps
    on transfers (1,024) and on transfers not yet ACKed (256) are raised to that many, as a
    site with that many nodes would: all of them ask for the boot program in the same second."""
    shared = "" if db_url is None else (f'[database]\nurl = "{db_url}"\n'
                                         f'[cluster]\nname = "{name}"\nheartbeat = 0.5\ndead_after = 3.0\n')
    caps = f"max_transfers = {max(1024, clients)}\nmax_unconfirmed = {max(256, clients)}\n" if clients else ""
    return f"""data_dir = "{data_dir}"
{shared}[network]
interface = "{ifname}"
address = "{address}"
[dhcp]
mode = "full"
range = "{POOL[0]}-{POOL[1]}"
lease_time = {lease_time}
[tftp]
port = {TFTP_PORT}
{caps}[http]
port = {HTTP_PORT}
https_port = 0
[security]
overlay_over_http = true
[scale]
seed = {"true" if seed else "false"}
[boot]
default_image = "bench"
unknown_nodes = "boot"
"""


def run_generators(net, work: Path, base: dict, workers: int, mode: str, start_at: float = 0.0,
                   timeout: float = 600) -> list[dict]:
    """Run `workers` load generator processes in the client namespace, the clients split among them.

    `base` holds the generator parameters (`client_params()`); returns each process's output.
    """
    n = base["n"]
    procs = []
    for w in range(workers):
        first, count = n * w // workers, n * (w + 1) // workers - n * w // workers
        pf, of = work / f"params-{mode}-{w}.json", work / f"out-{mode}-{w}.json"
        of.unlink(missing_ok=True)
        pf.write_text(json.dumps(dict(base, mode=mode, first=first, count=count, start_at=start_at)))
        cmd = net.exec(net.cli, sys.executable, "-m", "ramboot.bench", "storm", "--client-params",
                       str(pf), "--client-out", str(of))
        procs.append((Child(cmd, log=work / f"gen-{mode}-{w}.log"), of))
    outs = []
    for child, of in procs:
        try:
            child.proc.wait(timeout + 300)
        except Exception:
            child.stop()
        child.stop()
        if child.proc.returncode != 0 or not of.exists():
            raise click.ClickException(f"bench storm: a load generator failed:\n{child.tail(20)}")
        outs.append(json.loads(of.read_text()))
    return outs


def client_params(n: int, ifname: str, server: str, data: Path, man: dict, blksize: int = 1456,
                  windowsize: int = 0, ramp: float = 0.0, timeout: float = 600, mac_prefix: str | None = None,
                  bound_seconds: float = 0.0, boot_retries: int = BOOT_RETRIES, seed: bool = False) -> dict:
    """The load generators' parameters for `n` clients against the server at `server`."""
    from ..images.manifest import images_dir

    refs = {name: (str(images_dir(data) / "bench" / name), sha) for name, sha in man.items()}
    for f in (data / "loaders").iterdir():
        if f.is_file():
            refs[f"loaders/{f.name}"] = (str(f), hashlib.sha256(f.read_bytes()).hexdigest())
    return {
        "n": n, "ifname": ifname, "server": server, "blksize": blksize, "windowsize": windowsize,
        "ramp": ramp, "timeout": timeout, "references": refs, "manifest": man,
        "mac_prefix": mac_prefix or "02" + secrets.token_hex(2), "bound_seconds": bound_seconds,
        "boot_retries": boot_retries, "seed": seed,
    }


def prepare_data(data: Path, image_mb: float) -> dict:
    """A data dir with the synthetic image `bench` and the boot programs; returns the manifest's sums."""
    from ..namespace import install_loaders
    from .util import make_image

    man = make_image(data, "bench", int(image_mb * 2**20))
    install_loaders(data)
    ldir = data / "loaders"
    if not (ldir / "undionly.kpxe").exists():  # no ipxe package: any bytes will do for the transfer
        (ldir / "undionly.kpxe").write_bytes(os.urandom(70_000))
    return man


def run_storm(n: int = 100, image_mb: float = 8, blksize: int = 1456, windowsize: int = 0, ramp: float = 0.0,
              timeout: float = 600, keep: Path | None = None, bound_seconds: float = 2.0, verbose: bool = True,
              workers: int = 2, servers: int = 1, kill_after: float | None = None,
              impair: Impairment | None = None, seed: bool = False, link_mbit: float = 0.0) -> dict:
    """Run one storm end to end (namespaces, servers, clients); returns the summary dict.

    `seed`: booted clients serve their root to later ones as nodes do (`[scale] seed`), else
    the server has seeding off. `link_mbit`: the server's veth limited to that rate (tc tbf).

    `servers` > 1: that many `ramboot serve` on one bridge and one throwaway PostgreSQL
    cluster (same range, full DHCP). `kill_after`: SIGKILL the first server that many
    seconds into the storm; the clients fall back as nodes do (DHCP from the other
    server, `||` in the iPXE script, the list of root URLs, a firmware retry).
    With `impair`, the wire between the clients and the servers drops and delays
    frames each way (`ramboot.lab.impair`) and the link-bound probe is skipped.
    """
    import signal
    import threading

    from ..lab.pg import TempCluster
    from .util import Child, NetnsPair, RssSampler, cpu_seconds, ramboot_exe, rss_bytes, run

    if impair is not None:
        bound_seconds = 0.0
    if os.geteuid() != 0:
        raise click.ClickException("bench storm needs root (it makes network namespaces)")
    if n > 4000:
        raise click.ClickException("bench storm: at most 4000 clients (the pool is a /20)")
    work = Path(tempfile.mkdtemp(prefix="rbb-storm-"))
    data = work / "data"
    pg: TempCluster | None = None
    say = (lambda *a: click.echo(" ".join(str(x) for x in a), err=True)) if verbose else (lambda *a: None)
    try:
        man = prepare_data(data, image_mb)
        ldir = data / "loaders"
        if servers > 1:
            pg = TempCluster().start()
        net = NetnsPair(impair=impair)
        with net:
            run("ip", "-n", net.cli, "route", "add", "local", POOL_NET, "dev", "lo")
            db_url = pg.create_db("storm") if pg else None
            places = [(net.srv, net.srv_if, net.srv_ip)]
            for i in range(2, servers + 1):
                places.append(net.add_server(i))
            if servers > 1:
                places[0] = (net.srv, net.bridge, net.srv_ip)
            for ns, ifname, _addr in places:
                # The pool via the client namespace's own address: one ARP entry on the server's side
                # instead of one per client. The kernel's ARP table is shared by every namespace on
                # the host (gc_thresh3, 1,024 by default): 3,000 clients would overflow it, here and
                # for everyone else on the machine.
                run("ip", "-n", ns, "route", "add", POOL_NET, "via", net.cli_ip, "dev", ifname)
            children: list = []
            blaster = None
            try:
                for i, (ns, ifname, addr) in enumerate(places):
                    d = data if i == 0 else work / f"data{i + 1}"
                    if i:  # the same image, hard-linked: identical files stored once
                        (d / "images" / "bench").mkdir(parents=True, exist_ok=True)
                        for f in (data / "images" / "bench").iterdir():
                            os.link(f, d / "images" / "bench" / f.name)
                        shutil.copytree(ldir, d / "loaders", copy_function=os.link)
                    cfg = work / f"ramboot{i + 1}.toml"
                    cfg.write_text(server_config(d, ifname, address=addr, db_url=db_url, name=f"s{i + 1}", clients=n,
                                                 seed=seed))
                    log = work / ("server.log" if i == 0 else f"server{i + 1}.log")
                    children.append(Child(net.exec(ns, ramboot_exe(), "serve", "--config", str(cfg)), log=log))
                    end = time.monotonic() + 30
                    while "serving on" not in log.read_text(errors="replace"):
                        if not children[-1].alive() or time.monotonic() > end:
                            raise click.ClickException(f"bench storm: server {i + 1} did not start:\n"
                                                       f"{children[-1].tail(10)}")
                        time.sleep(0.05)
                srv = children[0]
                if servers > 1:
                    time.sleep(1.5)  # a heartbeat or two: each server names the others to nodes
                if bound_seconds:
                    blaster = Child(net.exec(net.srv, sys.executable, "-m", "ramboot.bench", "storm", "--blast",
                                             str(data / "images" / "bench" / "rootfs.squashfs")),
                                    log=work / "blast.log")
                    time.sleep(0.3)
                if link_mbit:  # what the server sends, at the link's rate (tbf; this kernel has no netem)
                    run("ip", "netns", "exec", net.srv, "tc", "qdisc", "add", "dev", net.srv_if, "root", "tbf",
                        "rate", f"{link_mbit:g}mbit", "burst", f"{max(64, int(link_mbit * 2))}kb", "latency", "50ms")
                base = client_params(n, net.cli_if, net.srv_ip, data, man, blksize, windowsize, ramp, timeout,
                                     bound_seconds=bound_seconds, seed=seed)

                def generators(mode: str, start_at: float = 0.0) -> list[dict]:
                    return run_generators(net, work, base, workers, mode, start_at, timeout)

                bound = 0.0
                if bound_seconds:
                    bound = sum(o["bound_mb_s"] for o in generators("bound"))
                say(f"storm: {n} clients in {workers} generator processes, image {image_mb} MB,"
                    f" server pid {srv.pid} in {net.srv}")
                rss0 = rss_bytes(srv.pid)
                cpu0 = cpu_seconds(srv.pid)
                killer = None
                killed_at: list[float] = []  # CLOCK_MONOTONIC is one clock for every process here
                # the generators start, import, and check the references against the manifest first
                start_at = time.time() + 1.0 + 0.1 * workers + sum(os.path.getsize(f) for f, _ in
                                                                    base["references"].values()) / 1e9
                if kill_after is not None:
                    def kill() -> None:
                        say(f"storm: kill -9 server 1 (pid {srv.pid}) {kill_after} s into the storm")
                        os.kill(srv.pid, signal.SIGKILL)
                        killed_at.append(time.monotonic())
                    killer = threading.Timer(max(0.0, start_at - time.time()) + kill_after, kill)
                    killer.start()
                load0, busy0 = os.getloadavg()[0], []
                at_start = threading.Timer(max(0.0, start_at - time.time()), lambda: busy0.append(_machine_jiffies()))
                at_start.start()
                tx_path = f"/sys/class/net/{net.srv_if}/statistics/tx_bytes"
                tx0 = int(run("ip", "netns", "exec", net.srv, "cat", tx_path).stdout)
                with RssSampler(srv.pid) as rs:
                    outs = generators("storm", start_at)
                server_tx = int(run("ip", "netns", "exec", net.srv, "cat", tx_path).stdout) - tx0
                busy1 = _machine_jiffies()
                at_start.join()
                if killer is not None:
                    killer.cancel()
                cpu = cpu_seconds(srv.pid) - cpu0 if srv.alive() else 0.0
                # the storm's own duration (from the common power-on), over which CPU shares are taken
                wall = max(o["wall"] for o in outs)
                out = {"wall": wall, "bound_mb_s": bound, "server_tx_bytes": server_tx,
                       "gen_cpu_s": [o["cpu_s"] for o in outs],
                       "stray_dhcp": sum(o["stray_dhcp"] for o in outs),
                       "results": [r for o in outs for r in o["results"]]}
                (work / "out.json").write_text(json.dumps(out))
                server_alive = all(c.alive() for i, c in enumerate(children) if not (i == 0 and kill_after is not None))
            finally:
                if blaster:
                    blaster.stop()
                for c in children:
                    c.stop()
        results = out["results"]
        ok = [r for r in results if r["ok"]]
        bad = [r for r in results if not r["ok"]]
        times = [r["total"] for r in ok]
        nbytes = sum(r["bytes"] for r in results)
        reasons: dict[str, int] = {}
        for r in bad:
            key = re.sub(r"\d+(\.\d+)?", "N", r["error"])[:120]
            reasons[key] = reasons.get(key, 0) + 1
        phases = sorted({k for r in ok for k in r["phases"]},
                        key=lambda k: list(ok[0]["phases"]).index(k) if ok and k in ok[0]["phases"] else 99)
        summary = {
            "clients": n, "image_mb": image_mb, "ok": len(ok), "failed": len(bad), "failure_reasons": reasons,
            "p50_s": _pct(times, 0.5), "p99_s": _pct(times, 0.99), "max_s": max(times, default=0.0),
            "wall_s": out["wall"],
            "phase_p50_s": {k: _pct([r["phases"][k] for r in ok if k in r["phases"]], 0.5) for k in phases},
            "phase_p99_s": {k: _pct([r["phases"][k] for r in ok if k in r["phases"]], 0.99) for k in phases},
            "dhcp_retries": sum(r["dhcp_retries"] for r in results),
            "tftp_retries": sum(r["tftp_retries"] for r in results),
            "boot_retries": sum(r.get("boot_retries", 0) for r in results),
            "impairment": impair.describe() if impair else "",
            "wire": net.relay_counters().get("directions", {}) if impair else {},
            "bytes": nbytes, "aggregate_mb_s": nbytes / 2**20 / out["wall"] if out["wall"] else 0.0,
            "bound_mb_s": out["bound_mb_s"],
            "server_cpu_s": cpu, "server_cpu_pct": 100 * cpu / wall if wall else 0.0,
            "generator_cpu_s": sum(out["gen_cpu_s"]),
            "generator_cpu_pct": 100 * sum(out["gen_cpu_s"]) / wall if wall else 0.0,
            "generator_cpu_pct_max": 100 * max(out["gen_cpu_s"]) / wall if wall else 0.0,
            "machine_busy_pct": 100 * (busy1[0] - busy0[0][0]) / max(1, busy1[1] - busy0[0][1]),
            "load_start": load0, "load_end": os.getloadavg()[0],
            "server_rss_mb_start": rss0 / 2**20, "server_rss_mb_peak": rs.peak / 2**20,
            "server_alive": server_alive, "stray_dhcp": out["stray_dhcp"], "workers": workers,
            "servers": servers, "killed_after_s": kill_after,
            "restarts": sum(r.get("restarts", 0) for r in results),
            # boots under way when the server died (started before, ended after)
            "in_flight_at_kill": sum(1 for r in results if killed_at and r["start"] <= killed_at[0]
                                     <= r["start"] + r["total"]),
            "acks_by_server": _count_servers(results),
            "seed": seed, "link_mbit": link_mbit, "server_tx_bytes": out["server_tx_bytes"],
        }
        summary["bound"] = bound_side(summary)
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            for f in [*work.glob("*.log"), *work.glob("*.json"), work / "ramboot.toml"]:
                if f.exists():
                    shutil.copy(f, keep / f.name)
        return summary
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all the machine's cores, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]  # guest is in user
    idle = v[3] + v[4]  # idle, iowait
    return sum(v) - idle, sum(v)


def bound_side(s: dict) -> str:
    """Which side held the storm back. Within 80 % of the raw-TCP rate over the same veth it
    is the link (the kernel's copies). The server is one thread, so near a whole core it is
    the bound, and so is a generator process near its own. With the machine's cores full
    (other people's jobs included), the side that used clearly more of them is."""
    srv, gen, gmax, busy = (s["server_cpu_pct"], s["generator_cpu_pct"], s["generator_cpu_pct_max"],
                            s["machine_busy_pct"])
    if s["bound_mb_s"] and s["aggregate_mb_s"] >= 0.8 * s["bound_mb_s"]:
        return f"link ({s['aggregate_mb_s'] / s['bound_mb_s']:.0%} of the raw-TCP rate)"
    if busy >= 90:
        if abs(srv - gen) < 0.15 * max(srv, gen):
            return "both (the machine's cores, shared alike)"
        return "server" if srv > gen else "generator"
    if srv >= 85:
        return "server"
    if gmax >= 85:
        return "generator"
    return "neither (waits: round trips, timers)"


def _count_servers(results: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for sid in r.get("servers", ()):
            out[sid] = out.get(sid, 0) + 1
    return out


def format_summary(s: dict) -> str:
    bound = s["bound_mb_s"]
    lines = [
        f"storm: {s['clients']} clients, image {s['image_mb']} MB: {s['ok']} booted, {s['failed']} failed"
        + ("" if s["server_alive"] else "  (SERVER DIED)")
        + (f"   wire: {s['impairment']}" if s.get("impairment") else ""),
        f"  completion   p50 {s['p50_s']:.2f} s   p99 {s['p99_s']:.2f} s   max {s['max_s']:.2f} s"
        f"   (wall {s['wall_s']:.2f} s)",
        "  phase p50    " + "   ".join(f"{k} {v:.3f}" for k, v in s["phase_p50_s"].items()),
        "  phase p99    " + "   ".join(f"{k} {v:.3f}" for k, v in s["phase_p99_s"].items()),
        f"  retries      dhcp {s['dhcp_retries']}   tftp {s['tftp_retries']}   whole boots {s.get('restarts', 0)}",
        f"  transfer     {s['bytes'] / 2**20:,.0f} MB at {s['aggregate_mb_s']:,.0f} MB/s aggregate"
        + (f"; link bound {bound:,.0f} MB/s (raw TCP into the same generator processes, nothing checked)"
           f" -> {s['aggregate_mb_s'] / bound:.0%}" if bound else ""),
        f"  server       CPU {s['server_cpu_s']:.1f} s ({s['server_cpu_pct']:.0f}% of one core)"
        f"   RSS {s['server_rss_mb_start']:.0f} -> peak {s['server_rss_mb_peak']:.0f} MB",
        f"  generator    CPU {s['generator_cpu_s']:.1f} s ({s['generator_cpu_pct']:.0f}% of one core in"
        f" {s['workers']} processes, the busiest {s['generator_cpu_pct_max']:.0f}%)",
        f"  bound        {s['bound']}   (machine {s['machine_busy_pct']:.0f}% busy over its {os.cpu_count()} cores,"
        f" load {s['load_start']:.1f} -> {s['load_end']:.1f})",
    ]
    if s.get("servers", 1) > 1:
        killed = (f", server 1 killed -9 after {s['killed_after_s']} s with {s['in_flight_at_kill']} boots under way"
                  if s.get("killed_after_s") is not None else "")
        lines.insert(1, f"  servers      {s['servers']} on one PostgreSQL{killed}; DHCP ACKs by server "
                        + ", ".join(f"{k} {v}" for k, v in sorted(s["acks_by_server"].items())))
    for name, c in s.get("wire", {}).items():
        lines.append(f"  wire         {name}: {c['frames']} frames, {c['lost']} lost, {c['queue_drops']} queue drops")
    for reason, count in sorted(s["failure_reasons"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  FAILED x{count}: {reason}")
    return "\n".join(lines)


def _blast(path: str) -> None:
    """The link-bound helper: serve `path` over and over with sendfile to whoever connects."""
    import threading

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", BLAST_PORT))
    srv.listen(64)
    size = os.path.getsize(path)

    def serve(c: socket.socket) -> None:
        with c, open(path, "rb") as f:
            try:
                while True:
                    off = 0
                    while off < size:
                        off += os.sendfile(c.fileno(), f.fileno(), off, size - off)
            except OSError:
                pass

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


@click.command()
@click.option("-n", "--clients", "n", type=click.IntRange(1, 4000), default=100, show_default=True,
              help="PXE clients booting at once")
@click.option("--image-mb", type=float, default=8, show_default=True,
              help="root image size (kernel is 1/16, initrd 1/8 of it)")
@click.option("--blksize", type=int, default=1456, show_default=True, help="TFTP blksize the clients ask for")
@click.option("--windowsize", type=int, default=0, show_default=True,
              help="TFTP windowsize the clients ask for (0: none, like a PXE ROM)")
@click.option("--ramp", type=float, default=0.0, show_default=True, help="spread the power-ons over this many seconds")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="load generator processes (the clients are split among them)")
@click.option("--timeout", type=float, default=600, show_default=True, help="per-client HTTP timeout, seconds")
@click.option("--servers", type=click.IntRange(1, 8), default=1, show_default=True,
              help="ramboot servers on one bridge and one throwaway PostgreSQL cluster")
@click.option("--kill-after", type=float, default=None,
              help="kill -9 the first server this many seconds into the storm")
@click.option("--loss", type=click.FloatRange(0, 100), default=0.0, show_default=True,
              help="percent of frames the wire drops, each way (ramboot.lab.impair; netem's `loss`)")
@click.option("--delay", "delay_ms", type=click.FloatRange(0, 10_000), default=0.0, show_default=True,
              help="milliseconds the wire holds every frame, each way (netem's `delay`)")
@click.option("--seed", type=int, help="the wire's RNG seed (with --loss)")
@click.option("--seeding/--no-seeding", default=False, show_default=True,
              help="booted clients serve their root to later ones, as nodes do ([scale] seed)")
@click.option("--link-mbit", type=click.FloatRange(0), default=0.0, show_default=True,
              help="limit what the server sends to this rate (tc tbf on its veth; 0: no limit)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="write the summary here")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="keep the server log and raw results here")
@click.option("--client-params", hidden=True, type=click.Path(dir_okay=False))
@click.option("--client-out", hidden=True, type=click.Path(dir_okay=False))
@click.option("--blast", hidden=True, type=click.Path(dir_okay=False))
def storm(
    n, image_mb, blksize, windowsize, ramp, workers, timeout, servers, kill_after, loss, delay_ms, seed, seeding,
    link_mbit, json_out, keep, client_params,
    client_out, blast
) -> None:
    """Simulate N PXE clients booting at once against a real `ramboot serve` in a namespace."""
    if blast:
        _blast(blast)
        return
    if client_params:  # the load generator itself, inside the client namespace
        p = json.loads(Path(client_params).read_text())
        try:
            import uvloop

            factory = uvloop.new_event_loop  # a cheaper loop per datagram and per recv
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            out = runner.run(run_clients(p))
        Path(client_out).write_text(json.dumps(out))
        return
    if kill_after is not None and servers < 2:
        raise click.ClickException("bench storm: --kill-after needs --servers 2 or more (someone must be left)")
    impair = Impairment(loss / 100, delay_ms / 1000, seed=seed) if loss or delay_ms else None
    s = run_storm(n, image_mb, blksize, windowsize, ramp, timeout, keep, workers=workers, servers=servers,
                  kill_after=kill_after, impair=impair, seed=seeding, link_mbit=link_mbit)
    click.echo(format_summary(s))
    if json_out:
        json_out.write_text(json.dumps(s, indent=1))
    if s["failed"] or not s["server_alive"]:
        sys.exit(1)


if __name__ == "__main__":
    storm(prog_name="ramboot bench storm")
