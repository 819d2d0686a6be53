"""The TFTP server: a thin asyncio shell around `ramboot.proto.tftp_core`.

One listening socket takes requests; each transfer gets its own ephemeral
socket (its TID), bound to the address the request arrived on. Sockets are
driven with `add_reader` and plain `sendto`/`recvfrom` rather than asyncio
transports: on the hot path a window is one burst of sends from the
transfer's preallocated ring, and the reader callback takes one datagram.
Windows go out with UDP GSO (UDP_SEGMENT) when the kernel has it: one send
carries up to 64 KiB of equal-sized datagrams, split by the kernel, so the
wire sees exactly the datagrams a send per packet would.

Nothing a client sends stops the server: junk is dropped and counted
(`ramboot_dropped_total{protocol="tftp",reason}`), transfers are capped per
source and in total, and each transfer has one lazily re-armed timer.

Spoofed requests: a transfer whose client has not ACKed anything yet is
"unconfirmed"; it holds no ring (OACK) or one packet (DATA 1), sends at most
one DATA or three OACKs, and ends after 7 s. `max_per_source` is a hard cap
(silence above it), so a forged address gets at most that many answers per
7 s; over `max_unconfirmed` or `max_transfers` the oldest unconfirmed transfer
is dropped to make room, so forged requests from many addresses cannot lock
real clients out. All rings together stay under `max_memory_mib`
(`proto.MemoryBudget`).

Lock-step transfers (windowsize 1), once confirmed, are served each by a
thread of its own from a small pool (`[tftp] lockstep_threads`), as tftpd-hpa
serves each client from a process: a blocking `recv` on the transfer's
socket, connected to the client, the core's answer, one `send`, with no event
loop between the ACK and the DATA it calls for (docs/decisions.md). A sibling
socket on the same port, on the loop, answers everyone else with ERROR 5.
Past the pool's size they stay on the loop. The core makes every decision on
both paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .. import metrics, names
from ..config import Config
from ..namespace import GeneratedFile, Namespace, PathRefused, Resolved
from ..proto import tftp_core as proto
from .events import EventLog

log = logging.getLogger("ramboot.tftp")

IP_PKTINFO = 8  # Linux value; Python 3.11's socket module lacks the constant
SOL_UDP, UDP_SEGMENT = 17, 103  # Linux values; not in Python 3.11 either
_GSO_MAX_BYTES, _GSO_MAX_SEGMENTS = 65507, 64  # one UDP datagram's payload; the kernel's segment cap
_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT)  # no offload on the route, or a segment over the MTU
_CMSG_SPACE = socket.CMSG_SPACE(12)
_RECV_SIZE = 65536
_ACK_RECV_SIZE = 1024  # a transfer socket only needs ACK and ERROR headers; longer datagrams are cut
_RCVTIMEO_SLACK = 0.005  # a thread's receive timeout is reset only when the deadline moved more than this


def _limits(config: Config) -> proto.Limits:
    return proto.Limits(max_blksize=config.tftp.max_blksize, max_windowsize=config.tftp.max_windowsize)


# Names whose content is generated per request, by the policy and the access rule.
GENERATED = (names.PxelinuxConfig, names.GrubConfig, names.Script)


@dataclass
class _Transfer:
    machine: proto.ReadTransfer
    sock: socket.socket
    peer: tuple[str, int]
    name: str
    kind: str
    mac: str | None  # the NIC a generated file was made for, when its name says
    started: float
    timer: asyncio.TimerHandle | None = None
    counted: int = 0  # bytes already added to the Prometheus counter
    gso_bytes: int = 0  # bytes per GSO send, a whole number of segments; 0: one send per datagram
    gso_cmsg: list[tuple[int, int, bytes]] | None = None  # the UDP_SEGMENT ancillary data for those sends
    thread: Future[None] | None = None  # served by a thread (lock-step): the loop leaves it alone till it ends
    held: int = 0  # ring bytes taken from the budget before the thread took the transfer
    stopping: bool = False  # the server closes: the thread stops at its next wake-up
    strangers: socket.socket | None = None  # with `thread`: the port's other socket, for everyone but the client


class TftpServer:
    def __init__(self, config: Config, namespace: Namespace, events: EventLog):
        self.config = config
        self.namespace = namespace
        self.events = events
        self.limits = _limits(config)
        self.loop = asyncio.get_running_loop()
        self.sock: socket.socket | None = None
        self.port = 0
        self.transfers: dict[int, _Transfer] = {}  # by transfer socket fd
        self.per_source: dict[str, int] = {}
        # Transfers whose client has not ACKed yet, oldest first (dicts keep insertion order).
        self.unconfirmed: dict[int, _Transfer] = {}
        self.budget = proto.MemoryBudget(config.tftp.max_memory_mib << 20)
        metrics.TFTP_RING_BYTES.set_function(lambda: self.budget.used)
        metrics.TFTP_RING_PEAK.set_function(lambda: self.budget.peak)
        metrics.TFTP_ACTIVE.labels("unconfirmed").set_function(lambda: len(self.unconfirmed))
        metrics.TFTP_ACTIVE.labels("all").set_function(lambda: len(self.transfers))
        self.gso: bool | None = None  # kernel UDP GSO: None until the first windowed transfer asks
        self.max_threads = config.tftp.lockstep_threads
        self.pool = (ThreadPoolExecutor(self.max_threads, thread_name_prefix="tftp-lockstep")
                     if self.max_threads else None)
        self.threaded: dict[int, _Transfer] = {}  # by transfer socket fd, the transfers threads serve
        metrics.TFTP_ACTIVE.labels("thread").set_function(lambda: len(self.threaded))

    def listen(self, host: str, port: int, reuse_port: bool = False) -> None:
        """On `host`: "0.0.0.0" (IPv4) or "::" (IPv6 only; IPv4 has its own server and socket).
        `reuse_port`: one of several workers' sockets on the port; the kernel spreads requests by
        the client's address and port, so a retransmitted RRQ reaches the same worker, and each
        transfer's own socket stays in the worker that took its RRQ."""
        v6 = ":" in host
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            s.setblocking(False)
            s.bind((host, port))
        except OSError:
            s.close()
            raise
        self.sock = s
        self.port = s.getsockname()[1]
        self.loop.add_reader(s.fileno(), self._on_request_ready)

    async def close(self) -> None:
        """End every transfer; threads are woken (a shutdown of the socket they wait on) and
        joined, so none is left behind."""
        threaded = list(self.threaded.values())
        for t in threaded:
            t.stopping = True
            with contextlib.suppress(OSError):  # the thread's blocked recv returns b"" at once
                t.sock.shutdown(socket.SHUT_RD)
        for t in list(self.transfers.values()):
            if t.thread is None:
                self._end(t)
        if threaded:
            await asyncio.wait([asyncio.wrap_future(t.thread) for t in threaded if t.thread is not None])
            for t in threaded:
                self._thread_done(t)
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # its threads are idle by now: they exit at once
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    # ---------------------------------------------------------- requests

    def _on_request_ready(self) -> None:
        assert self.sock is not None
        for _ in range(64):  # bounded, so a flood cannot starve running transfers
            try:
                data, anc, _flags, peer = self.sock.recvmsg(_RECV_SIZE, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP errors surfacing as ECONNREFUSED
                log.debug("tftp: recv error %s", e)
                continue
            try:
                self._on_request(data, peer, _local_address(anc))
            except Exception as e:  # a bad request never stops the server, and costs one line
                metrics.dropped("tftp", "handler-error")
                log.warning("tftp: request from %s dropped: %s: %s", peer[0], type(e).__name__, e)

    def _reply_error(self, peer: tuple[str, int], code: proto.ErrorCode, message: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(proto.error_packet(code, message), peer)
        except OSError:
            pass

    def _on_request(self, data: bytes, peer: tuple[str, int], local: str | None) -> None:
        try:
            req = proto.parse(data)
        except proto.MalformedPacket as e:
            metrics.dropped("tftp", "malformed")
            log.debug("tftp: malformed packet from %s: %s", peer, e)
            return
        if not isinstance(req, proto.Request):
            metrics.dropped("tftp", "not-a-request")
            return  # stray DATA/ACK/ERROR on the request port: not worth an answer
        if req.opcode == proto.WRQ:
            metrics.dropped("tftp", "write-request")
            self._reply_error(peer, proto.ErrorCode.ACCESS_VIOLATION, "read-only server")
            return
        if req.mode not in ("octet", "netascii"):
            metrics.dropped("tftp", "bad-mode")
            self._reply_error(peer, proto.ErrorCode.ILLEGAL_OPERATION, f"mode {req.mode} not supported")
            return
        ip = peer[0]
        if not self._make_room(ip):
            # Over a cap we stay silent: a PXE ROM gives up on an ERROR but resends
            # an unanswered RRQ, so in a boot storm it simply comes back a second
            # later; and a spoofed flood gets nothing at all.
            metrics.TFTP_TRANSFERS.labels(outcome="busy").inc()
            return
        try:
            name = names.parse_rooted(req.filename)
        except PathRefused as e:
            self._refused(req, peer, e)
            return
        if isinstance(name, GENERATED):
            # A generated config asks the policy and the access rule, which read and write the
            # store: in a worker thread, never on the loop that also answers DHCP.
            fut = self.loop.run_in_executor(None, self.namespace.lookup, name, ip)
            fut.add_done_callback(lambda f: self._resolved(req, peer, local, f))
            return
        try:
            resolved = self.namespace.lookup(name, ip)
        except PathRefused as e:
            self._refused(req, peer, e)
            return
        self._serve(req, peer, local, resolved)

    def _refused(self, req: proto.Request, peer: tuple[str, int], e: Exception) -> None:
        log.debug("tftp: refused %r from %s: %s", req.filename[:200], peer[0], e)  # counted: path-refused
        metrics.TFTP_TRANSFERS.labels(outcome="refused").inc()
        metrics.dropped("tftp", "path-refused")
        self._reply_error(peer, proto.ErrorCode.ACCESS_VIOLATION, "access violation")

    def _resolved(self, req: proto.Request, peer: tuple[str, int], local: str | None,
                  fut: asyncio.Future[Resolved | None]) -> None:
        """Back on the loop with a generated file (or why not)."""
        if self.sock is None:
            return  # closed meanwhile
        try:
            self._serve(req, peer, local, fut.result())
        except PathRefused as e:
            self._refused(req, peer, e)
        except Exception as e:  # a bad request never stops the server, and costs one line
            metrics.dropped("tftp", "handler-error")
            log.warning("tftp: request from %s dropped: %s: %s", peer[0], type(e).__name__, e)

    def _serve(self, req: proto.Request, peer: tuple[str, int], local: str | None,
               resolved: Resolved | None) -> None:
        ip = peer[0]
        if resolved is None:
            metrics.TFTP_TRANSFERS.labels(outcome="not-found").inc()
            metrics.dropped("tftp", "not-found")
            self._reply_error(peer, proto.ErrorCode.FILE_NOT_FOUND, "file not found")
            return
        try:
            source = _open_source(resolved, req.mode)
        except OSError as e:
            log.warning("tftp: cannot open %s: %s", req.filename, e)
            self._reply_error(peer, proto.ErrorCode.FILE_NOT_FOUND, "file not found")
            return
        try:
            sock = self._transfer_socket(local)
        except OSError as e:
            source.close()
            log.warning("tftp: no socket for a transfer: %s", e)
            metrics.TFTP_TRANSFERS.labels(outcome="busy").inc()
            return  # silent, as over a cap: the client resends
        mac = resolved.mac if isinstance(resolved, GeneratedFile) else None
        t = _Transfer(proto.ReadTransfer(req, source, self.limits, runs=True, budget=self.budget), sock, peer,
                      req.filename, resolved.kind, mac, time.monotonic())
        if t.machine.neg.windowsize > 1:
            self._gso_on(t)
        self.transfers[sock.fileno()] = t
        self.unconfirmed[sock.fileno()] = t
        self.per_source[ip] = self.per_source.get(ip, 0) + 1
        self.loop.add_reader(sock.fileno(), self._on_transfer_ready, t)
        self._drive(t, t.machine.start)
        self._after(t)

    def _make_room(self, ip: str) -> bool:
        """Room for one more transfer from `ip` under every cap.

        Per source the cap is hard (silence above it): what a forged address can make
        us send to its owner is bounded, not only per request. Above the total caps the
        oldest unconfirmed transfer is dropped to make room, so forged requests from
        many addresses cannot lock real clients out."""
        cfg = self.config.tftp
        if self.per_source.get(ip, 0) >= cfg.max_per_source:
            metrics.dropped("tftp", "busy-source")
            return False
        if len(self.unconfirmed) >= cfg.max_unconfirmed or len(self.transfers) >= cfg.max_transfers:
            victim = next(iter(self.unconfirmed.values()), None)
            if victim is None:
                metrics.dropped("tftp", "busy")
                return False
            self._evict(victim)
        if self.budget.used + 4 + proto.DEFAULT_BLKSIZE > self.budget.limit:
            metrics.dropped("tftp", "memory")
            return False
        return True

    def _evict(self, t: _Transfer) -> None:
        """End an unconfirmed transfer to make room: its client never answered (spoofed, or gone)."""
        metrics.dropped("tftp", "evicted-unconfirmed")
        t.machine.close("evicted")  # the client, if real, resends its RRQ
        self._end(t)

    def _transfer_socket(self, local: str | None) -> socket.socket:
        assert self.sock is not None
        s = socket.socket(self.sock.family, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.bind((local or self.sock.getsockname()[0], 0))
        except OSError:
            s.close()
            raise
        return s

    def _gso_on(self, t: _Transfer) -> None:
        """Send a windowed transfer's runs with UDP GSO, if the kernel has it (asked once).

        The segment size goes with each run's send, not on the socket, so an
        OACK or ERROR longer than a tiny block is never split.
        """
        segment = t.machine.segment
        segments = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // segment)
        if self.gso is False or segments < 2:
            return
        if self.gso is None:
            try:
                t.sock.getsockopt(SOL_UDP, UDP_SEGMENT)
                self.gso = True
            except OSError as e:
                self.gso = False
                log.debug("tftp: no UDP GSO (%s): one send per datagram", e)
                return
        t.gso_bytes = segments * segment
        t.gso_cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]

    # --------------------------------------------------------- transfers

    def _on_transfer_ready(self, t: _Transfer) -> None:
        """One datagram per wake-up: the selector is level-triggered, and in
        lock-step there is never a second one, so no EAGAIN round trip. The
        ACK-to-DATA path is inlined; the read for the next ACK follows the send."""
        sock, m = t.sock, t.machine
        try:
            data, peer = sock.recvfrom(_ACK_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # e.g. ICMP port unreachable from a vanished client
            log.debug("tftp: recv error %s", e)
            return
        if peer != t.peer:
            _unknown_tid(sock, peer)
            return
        rexmit, ignored, starved = m.retransmits, m.ignored, m.starved
        try:
            packets = m.on_packet(data, self.loop.time())
        except OSError as e:
            packets = self._read_failed(t, e)
        # A thread takes it from here: connected before the DATA leaves, so that the client
        # can only be repeating itself in the instant the socket changes (see `_connect`). Only
        # while every transfer of this process fits the pool: with more, the loop is busy and
        # threads waiting on its GIL cost more than they save (50 clients: 0.83x of the loop alone).
        handoff = (m.lockstep and len(self.transfers) <= self.max_threads and not m.done
                   and self._connect(t))
        if packets:
            # Lock-step's one DATA packet goes out first: the client waits on it, the
            # bookkeeping below can wait on the client.
            if len(packets) == 1 and len(packets[0]) <= m.segment:
                try:
                    sock.sendto(packets[0], peer)
                except OSError as e:  # a full buffer or a vanished route: the timer resends
                    log.debug("tftp: send to %s failed: %s", peer, e)
            else:
                self._send(t, packets)
            self._read_ahead(t)
        if m.ignored != ignored:
            metrics.dropped("tftp", "stale-or-junk")
        elif m.starved != starved:
            metrics.dropped("tftp", "memory")
        elif m.confirmed and self.unconfirmed:
            self.unconfirmed.pop(sock.fileno(), None)
        if m.retransmits != rexmit:
            metrics.TFTP_RETRANSMITS.inc(m.retransmits - rexmit)
        if m.bytes_sent - t.counted >= 1 << 20 or m.done:
            self._count_bytes(t)
        if handoff:
            self._to_thread(t)
        elif m.done or t.timer is None:
            self._after(t)

    def _connect(self, t: _Transfer) -> bool:
        """Connect a transfer's socket to its client, for the thread: the kernel then looks the
        route up once, not per send, and delivers to it only the client's datagrams. Everyone
        else's reach a sibling socket on the same port (SO_REUSEPORT: the same user only; a
        group with a connected member prefers it for its peer), and get ERROR 5 from the loop,
        from the same port as before. False, with nothing changed: the transfer stays on the loop.

        IPv4 only: over IPv6 to a link-local client (a PXE ROM's usual address) the client's ACKs
        reached the sibling, not the connected socket, and the transfer stalled (test_dhcp6_interop)."""
        sock = t.sock
        if sock.family != socket.AF_INET:
            return False
        try:
            sib = socket.socket(sock.family, socket.SOCK_DGRAM)
        except OSError:
            return False
        try:
            sib.setblocking(False)
            sib.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # bound already: its port stays its own
            sib.bind(sock.getsockname())
            sock.connect(t.peer)  # after the sibling joined, so the group knows it has a connected member
        except OSError as e:
            sib.close()
            log.debug("tftp: no connected socket for %s (%s): the transfer stays on the loop", t.peer[0], e)
            return False
        t.strangers = sib
        self.loop.add_reader(sib.fileno(), self._on_stranger, t)
        return True

    def _on_stranger(self, t: _Transfer) -> None:
        """A datagram to a threaded transfer's port from anyone but its client: ERROR 5, as on the loop.
        The client's own land here only in the instant before `connect`, with its DATA not yet sent:
        a repeated ACK, which the core would ignore too."""
        assert t.strangers is not None
        for _ in range(64):
            try:
                data, peer = t.strangers.recvfrom(_ACK_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("tftp: recv error %s", e)
                return
            if peer == t.peer:
                metrics.dropped("tftp", "stale-or-junk")
            else:
                _unknown_tid(t.strangers, peer)

    def _to_thread(self, t: _Transfer) -> None:
        """Hand a confirmed lock-step transfer to a thread of the pool (`_lockstep`), its DATA in flight."""
        assert self.pool is not None
        fd = t.sock.fileno()
        self.loop.remove_reader(fd)
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None
        t.held = t.machine.detach_budget()  # the budget is the loop's; given back in `_end`
        self.threaded[fd] = t
        t.thread = self.pool.submit(self._lockstep, t)
        t.thread.add_done_callback(lambda _f: self._from_thread(t))

    def _from_thread(self, t: _Transfer) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: `close` ended the transfer already
            self.loop.call_soon_threadsafe(self._thread_done, t)

    def _thread_done(self, t: _Transfer) -> None:
        """Back on the loop: the end-of-transfer bookkeeping, as for a transfer the loop served."""
        if t.thread is not None and not t.thread.cancelled() and (e := t.thread.exception()) is not None:
            log.warning("tftp: %s to %s: %s: %s", t.name, t.peer[0], type(e).__name__, e)
            t.machine.close("error")
        self._end(t)

    def _lockstep(self, t: _Transfer) -> None:
        """A lock-step transfer in a thread, on its connected socket: blocking `recv` (SO_RCVTIMEO set
        to the core's deadline) → `on_packet` → `send`, two system calls a block. Retransmission, duplicates,
        junk and the end are the core's decisions, as on the loop; the time passed in is the
        loop's clock (CLOCK_MONOTONIC for asyncio's loop and uvloop alike). Runs until the
        transfer is done or the server closes; the loop then ends it (`_thread_done`)."""
        sock, m, peer = t.sock, t.machine, t.peer
        recv, on_packet, clock = sock.recv, m.on_packet, time.monotonic
        sock.setblocking(True)
        rcvtimeo = 0.0
        queued = True  # datagrams that came before `connect` may be anyone's: read with their address first
        now = clock()
        while not t.stopping:
            deadline = m.deadline
            if deadline is None:
                return  # done
            wait = deadline - now
            if wait <= 0:
                rexmit = m.retransmits
                try:
                    packets = m.on_timer(now)
                except OSError as e:
                    packets = self._read_failed(t, e)
                self._send_blocking(t, packets)
                metrics.TFTP_RETRANSMITS.inc(m.retransmits - rexmit)
                now = clock()
                continue
            if queued:
                try:
                    data, src = sock.recvfrom(_ACK_RECV_SIZE, socket.MSG_DONTWAIT)
                except OSError:  # BlockingIOError: none left; from now on only the client's arrive
                    queued = False
                    continue
                if src != peer:
                    _unknown_tid(sock, src)
                    continue
            else:
                if abs(wait - rcvtimeo) > _RCVTIMEO_SLACK:
                    rcvtimeo = wait
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(wait))
                try:
                    data = recv(_ACK_RECV_SIZE)
                except OSError as e:  # BlockingIOError: the receive timeout ran out (the loop's top sees it)
                    if not isinstance(e, BlockingIOError):
                        log.debug("tftp: recv error %s", e)
                    now = clock()
                    continue
                if not data and t.stopping:
                    return  # `close` shut the socket down
            now = clock()
            ignored = m.ignored
            try:
                packets = on_packet(data, now)
            except OSError as e:
                packets = self._read_failed(t, e)
            self._send_blocking(t, packets)  # lock-step: one DATA (or the ERROR that ends it)
            if m.ignored != ignored:
                metrics.dropped("tftp", "stale-or-junk")
            try:
                m.read_ahead()
            except OSError as e:
                self._send_blocking(t, self._read_failed(t, e))
            if m.bytes_sent - t.counted >= 1 << 20:
                self._count_bytes(t)

    def _send_blocking(self, t: _Transfer, packets: list[bytes | memoryview]) -> None:
        """From the thread, on the socket connected to the client; a failure (a vanished route)
        is left to the core's timer, which sends again."""
        for p in packets:
            try:
                t.sock.send(p)
            except OSError as e:
                log.debug("tftp: send to %s failed: %s", t.peer, e)

    def _count_bytes(self, t: _Transfer) -> None:
        """Feed the bytes counter in 1 MiB steps, not per packet (it takes a lock)."""
        metrics.TFTP_BYTES.inc(t.machine.bytes_sent - t.counted)
        t.counted = t.machine.bytes_sent

    def _on_timer(self, t: _Transfer) -> None:
        t.timer = None
        m = t.machine
        rexmit = m.retransmits
        self._drive(t, m.on_timer)
        metrics.TFTP_RETRANSMITS.inc(m.retransmits - rexmit)
        self._after(t)

    def _drive(self, t: _Transfer, step: Callable[[float], list[bytes | memoryview]]) -> None:
        """Run one machine step, send its packets and read ahead; a read error ends the transfer, never the server."""
        try:
            packets = step(self.loop.time())
        except OSError as e:
            packets = self._read_failed(t, e)
        self._send(t, packets)
        self._read_ahead(t)

    def _read_ahead(self, t: _Transfer) -> None:
        try:
            t.machine.read_ahead()
        except OSError as e:
            self._send(t, self._read_failed(t, e))

    def _read_failed(self, t: _Transfer, e: OSError) -> list[bytes | memoryview]:
        log.warning("tftp: reading %s failed: %s", t.name, e)
        return list(t.machine.fail("read error"))

    def _send(self, t: _Transfer, packets: list[bytes | memoryview]) -> None:
        """Send a step's packets: a run of DATA packets in GSO sends, or one datagram at a time.

        A full send buffer drops the rest (the timer resends); a route that
        refuses GSO turns it off for this socket and the run goes on without.
        """
        sendto, peer, seg = t.sock.sendto, t.peer, t.machine.segment
        for p in packets:
            try:
                if len(p) <= seg or p[1] != proto.DATA:
                    sendto(p, peer)
                    continue
                pos, size = 0, len(p)
                if t.gso_bytes:
                    try:
                        step, sendmsg, cmsg = t.gso_bytes, t.sock.sendmsg, t.gso_cmsg or []
                        while pos < size:
                            sendmsg([p[pos : pos + step]], cmsg, 0, peer)
                            pos += step
                        continue
                    except OSError as e:
                        if e.errno not in _GSO_REFUSED:
                            raise
                        self._gso_off(t, e)
                while pos < size:
                    sendto(p[pos : pos + seg], peer)
                    pos += seg
            except BlockingIOError:
                return
            except OSError as e:
                log.debug("tftp: send to %s failed: %s", peer, e)
                return

    def _gso_off(self, t: _Transfer, e: OSError) -> None:
        t.gso_bytes = 0
        log.debug("tftp: UDP GSO refused to %s (%s): one send per datagram", t.peer[0], e)

    def _after(self, t: _Transfer) -> None:
        """End a finished transfer, or make sure its timer fires by the machine's deadline."""
        m = t.machine
        if m.done:
            self._end(t)
            return
        if m.deadline is not None and t.timer is None:
            # Lazily armed: the timer fires at the old deadline, finds a later one and re-arms.
            t.timer = self.loop.call_at(m.deadline, self._on_timer, t)

    def _end(self, t: _Transfer) -> None:
        fd = t.sock.fileno()
        if self.transfers.pop(fd, None) is None:
            return
        self.unconfirmed.pop(fd, None)
        if t.thread is None:
            self.loop.remove_reader(fd)
        else:
            self.threaded.pop(fd, None)
            self.budget.give(t.held)
            if t.strangers is not None:
                self.loop.remove_reader(t.strangers.fileno())
                t.strangers.close()
        self._count_bytes(t)
        if t.timer is not None:
            t.timer.cancel()
        t.sock.close()
        t.machine.close()
        ip = t.peer[0]
        left = self.per_source.get(ip, 1) - 1
        if left:
            self.per_source[ip] = left
        else:
            self.per_source.pop(ip, None)
        m = t.machine
        outcome = m.outcome or "aborted"
        metrics.TFTP_TRANSFERS.labels(outcome=outcome).inc()
        seconds = time.monotonic() - t.started
        if m.confirmed or outcome == "ok":
            log.info("tftp: %s %s to %s: %d bytes in %.3fs", outcome, t.name, ip, m.bytes_sent, seconds)
        else:  # a client that never answered (spoofed, or gone): no line per request in a flood
            log.debug("tftp: %s %s to %s: the client never answered", outcome, t.name, ip)
        if outcome == "ok":
            self.events.served(ip, t.kind, t.name, t.mac, m.bytes_sent, round(seconds, 3), "tftp")


_IOV_MAX = 1024  # Linux's limit on buffers per preadv


class FileSource:
    """The transfer machine's reader for a file: opened once, blocks read with preadv,
    so nothing but the machine's ring is held."""

    def __init__(self, fd: int):
        self.fd = fd
        self.size: int | None = os.fstat(fd).st_size

    def readinto(self, bufs: list[memoryview], index: int) -> int:
        offset = index * len(bufs[0])
        total = 0
        while bufs:
            n = os.preadv(self.fd, bufs[:_IOV_MAX], offset + total)
            if n == 0:
                break
            total += n
            while bufs and n >= len(bufs[0]):  # a short read mid-file: resume after it
                n -= len(bufs[0])
                bufs = bufs[1:]
            if bufs and n:
                bufs = [bufs[0][n:]] + bufs[1:]
        return total

    def close(self) -> None:
        os.close(self.fd)


def _open_source(resolved: Resolved, mode: str) -> proto.DataSource:
    if isinstance(resolved, GeneratedFile):
        if mode == "netascii":
            return proto.NetasciiSource.from_bytes(resolved.data)
        return proto.BytesSource(resolved.data)
    fd = os.open(resolved.path, os.O_RDONLY | os.O_CLOEXEC)
    if mode == "netascii":
        return proto.NetasciiSource(lambda n: os.read(fd, n), lambda: os.close(fd))
    try:
        return FileSource(fd)
    except OSError:
        os.close(fd)
        raise


def _unknown_tid(sock: socket.socket, peer: tuple[str, int]) -> None:
    """RFC 1350: a datagram from another TID gets ERROR 5, and the transfer goes on."""
    metrics.dropped("tftp", "unknown-tid")
    with contextlib.suppress(OSError):
        sock.sendto(proto.error_packet(proto.ErrorCode.UNKNOWN_TID, "unknown transfer ID"), peer)


def _timeval(seconds: float) -> bytes:
    """SO_RCVTIMEO's struct timeval; never zero (zero would mean no timeout)."""
    usec = max(1000, int(seconds * 1e6))
    return struct.pack("@ll", usec // 1_000_000, usec % 1_000_000)


def _local_address(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The local address a request reached (IP_PKTINFO's ipi_spec_dst), to answer from it."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntoa(data[4:8])
    return None


async def start_tftp(config: Config, namespace: Namespace, events: EventLog,
                     host: str = "0.0.0.0", port: int | None = None, reuse_port: bool = False) -> TftpServer:
    """Listen for TFTP requests; `port=None` means `[tftp] port`, 0 an ephemeral one."""
    server = TftpServer(config, namespace, events)
    server.listen(host, config.tftp.port if port is None else port, reuse_port)
    log.debug("tftp: listening on %s:%d", host, server.port)
    return server
