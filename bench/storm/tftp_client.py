"""The TFTP load client: a PXE ROM's fetch of its boot program."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

from ramboot.proto import tftp_core as T

from .common import TFTP_PORT, ClientResult, Failed


class TftpFetch:
    """One RRQ (lock-step, or windowed) on a bare socket driven by `add_reader`.

    Per DATA: one callback, one recv, one send. One timer per transfer, re-armed lazily
    on expiry, so a packet costs no future, task or timer (asyncio's datagram transport,
    a queue and a `wait_for` per packet made the generator, not the server, the bound).
    """

    def __init__(self, local_ip: str, server: str, name: str, blksize: int, windowsize: int, res: ClientResult):
        self.loop = asyncio.get_running_loop()
        self.server, self.name, self.res = (server, TFTP_PORT), name, res
        self.want_blk, self.want_win = blksize, windowsize
        self.blk, self.win = 512, 1
        self.expected = 1
        self.chunks: list[bytes] = []
        self.peer: tuple[str, int] | None = None
        self.tries = 0
        self.last = time.monotonic()
        self.done: asyncio.Future[bytes] = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
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
            if self.timer is not None:
                self.timer.cancel()
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _send(self, data: bytes, to: tuple[str, int]) -> None:
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

