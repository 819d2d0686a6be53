"""TFTP read side, sans-IO: packet codec and the read-request state machine.

RFC 1350 (the protocol), 2347 (option extension, OACK), 2348 (blksize),
2349 (timeout, tsize) and 7440 (windowsize). Nothing here touches a socket or a
clock: packets come in as bytes, time comes in as a float, and each call
returns the datagrams to send. Bytes to send come from an injected reader
(`DataSource`); the asyncio shell in `ramboot.server.tftp_server` opens files
and only moves bytes.

Design points:
- Block numbers on the wire are 16 bits; the machine counts absolute blocks
  and maps ACKs back, so transfers past 65535 blocks roll over to 0.
- Duplicate ACKs are ignored (RFC 1123 4.2.3.1): only the timer retransmits,
  so a duplicated packet can never double every later window (Sorcerer's
  Apprentice). An ACK inside the window (RFC 7440 gap report) restarts the
  window after it.
- With options, nothing but a small OACK is sent before the client answers
  from the address it claims, so a spoofed RRQ cannot make us flood anyone.
- Data is read through `DataSource.readinto` straight into a ring of whole
  DATA packets (header in front of each payload): each block is read exactly
  once, in order, with one preadv per batch.
- Memory follows what the client has proven, never what it asked for:
  before the client's first ACK the ring is empty (an OACK answer) or holds
  the one DATA 1 packet (no options); the window then starts at about 64 KiB
  (whole, when the negotiated window is 128 KiB or less) and doubles each time a
  whole window is acknowledged, up to the negotiated windowsize, and the ring
  grows with it (copying the unacknowledged blocks).
  Once confirmed the ring holds two windows (more for small ones: up to
  16 KiB or 32 slots), so `read_ahead` can read the next window while the
  client is busy with this one, or one window when two would be over 1 MiB.
  A shared `MemoryBudget` caps all rings together: a ring that cannot grow
  keeps its window; a transfer that cannot get its first ring ignores the ACK
  (the client repeats it) and counts it in `starved`.
- Before the first ACK the server answers a spoofed RRQ with at most one
  DATA packet (never resent: the client repeats its RRQ or ACK) or an OACK
  resent at most `Limits.max_unconfirmed_retries` times, and gives up after
  that many timeouts. Bytes out per byte in are bounded (docs/benchmarks.md).
- With `runs=True` a window comes back as at most two contiguous runs of
  packets (the ring wraps once), each packet 4 + blksize bytes but the file's
  last: what one UDP GSO send takes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
DEFAULT_BLKSIZE = 512
MAX_WINDOWSIZE = 65535  # RFC 7440
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8  # RFC 2347


class MalformedPacket(ValueError):
    """The datagram is not a TFTP packet we can make sense of; the caller drops it."""


# --------------------------------------------------------------------- codec


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ. Option names are lower-cased; the first of a repeated name wins."""

    opcode: int
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        parts = [self.filename.encode(), self.mode.encode()]
        for k, v in self.options.items():
            parts += [k.encode("ascii"), v.encode("ascii")]
        return struct.pack("!H", self.opcode) + b"".join(p + b"\0" for p in parts)


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes

    def encode(self) -> bytes:
        return struct.pack("!HH", DATA, self.block) + self.payload


@dataclass(frozen=True)
class Ack:
    block: int

    def encode(self) -> bytes:
        return struct.pack("!HH", ACK, self.block)


@dataclass(frozen=True)
class Error:
    code: int
    message: str = ""

    def encode(self) -> bytes:
        msg = self.message.encode("ascii", "replace").replace(b"\0", b"?")
        return struct.pack("!HH", ERROR, self.code) + msg + b"\0"


@dataclass(frozen=True)
class OAck:
    options: dict[str, str]

    def encode(self) -> bytes:
        body = b"".join(k.encode("ascii") + b"\0" + v.encode("ascii") + b"\0" for k, v in self.options.items())
        return struct.pack("!H", OACK) + body


Packet = Request | Data | Ack | Error | OAck


def _strings(body: bytes) -> list[bytes]:
    if not body.endswith(b"\0"):
        raise MalformedPacket("string field not NUL-terminated")
    return body[:-1].split(b"\0")


def _parse_options(fields: list[bytes]) -> dict[str, str]:
    # Trailing NUL padding (some PXE ROMs send it) is dropped; an empty *value*
    # (RFC 2090's "multicast") is kept.
    while fields and fields[-1] == b"" and (len(fields) % 2 or fields[-2] == b""):
        fields = fields[:-1]
    if len(fields) % 2:
        raise MalformedPacket("option name without a value")
    opts: dict[str, str] = {}
    for i in range(0, len(fields), 2):
        try:
            name, value = fields[i].decode("ascii").lower(), fields[i + 1].decode("ascii")
        except UnicodeDecodeError:
            raise MalformedPacket("option is not ASCII") from None
        if not name:
            raise MalformedPacket("empty option name")
        opts.setdefault(name, value)
    return opts


def parse(packet: bytes) -> Packet:
    """Decode one datagram, or raise MalformedPacket."""
    if len(packet) < 2:
        raise MalformedPacket("shorter than an opcode")
    (op,) = struct.unpack_from("!H", packet)
    if op in (RRQ, WRQ):
        fields = _strings(packet[2:])
        if len(fields) < 2:
            raise MalformedPacket("request without filename and mode")
        try:
            filename = fields[0].decode("utf-8")
            mode = fields[1].decode("ascii").lower()
        except UnicodeDecodeError:
            raise MalformedPacket("filename or mode not decodable") from None
        if not filename or not mode:
            raise MalformedPacket("empty filename or mode")
        return Request(op, filename, mode, _parse_options(fields[2:]))
    if op == DATA:
        if len(packet) < 4:
            raise MalformedPacket("DATA shorter than its header")
        return Data(struct.unpack_from("!H", packet, 2)[0], bytes(packet[4:]))
    if op == ACK:
        if len(packet) < 4:
            raise MalformedPacket("ACK shorter than 4 bytes")
        return Ack(struct.unpack_from("!H", packet, 2)[0])
    if op == ERROR:
        if len(packet) < 4:
            raise MalformedPacket("ERROR shorter than its header")
        (code,) = struct.unpack_from("!H", packet, 2)
        msg = bytes(packet[4:]).split(b"\0", 1)[0].decode("ascii", "replace")
        return Error(code, msg)
    if op == OACK:
        body = packet[2:]
        return OAck(_parse_options(_strings(body)) if body else {})
    raise MalformedPacket(f"unknown opcode {op}")


# ------------------------------------------------------------- data sources


class DataSource(Protocol):
    """Where a transfer's bytes come from.

    `readinto(bufs, index)` fills consecutive blocks, `bufs[0]` being block
    `index` (0-based, each buffer blksize long), and returns the byte count;
    less than the buffers hold means the end. The machine asks for each block
    once, in increasing order, a window at a time (one pread for a file).
    `size` is the transfer size in bytes when known (for tsize).
    """

    @property
    def size(self) -> int | None: ...

    def readinto(self, bufs: list[memoryview], index: int) -> int: ...

    def close(self) -> None: ...


class BytesSource:
    """Generated content (pxelinux.cfg, scripts): already in memory and small."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self.size = len(data)

    def readinto(self, bufs: list[memoryview], index: int) -> int:
        pos, total = index * len(bufs[0]), 0
        for buf in bufs:
            chunk = self._data[pos : pos + len(buf)]
            buf[: len(chunk)] = chunk
            pos += len(chunk)
            total += len(chunk)
        return total

    def close(self) -> None:
        self._data.release()


class NetasciiSource:
    """RFC 1350 netascii (LF -> CR LF, CR -> CR NUL) over a sequential reader of raw bytes.

    The translation is per byte and needs no look-ahead, so it streams with a
    buffer of at most one read chunk plus one block.
    """

    CHUNK = 65536

    def __init__(self, read: Callable[[int], bytes], close: Callable[[], None] = lambda: None, size: int | None = None):
        self._read = read
        self._close = close
        self._pending = bytearray()
        self._eof = False
        self.size = size  # translated size, when the caller knows it

    @classmethod
    def from_bytes(cls, data: bytes) -> NetasciiSource:
        view = memoryview(data)
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            chunk = view[pos : pos + n]
            pos += len(chunk)
            return bytes(chunk)

        return cls(read, view.release, len(data) + data.count(b"\n") + data.count(b"\r"))

    def readinto(self, bufs: list[memoryview], index: int) -> int:
        total = 0
        for buf in bufs:
            want = len(buf)
            while len(self._pending) < want and not self._eof:
                raw = self._read(self.CHUNK)
                if raw:
                    self._pending += to_netascii(raw)
                else:
                    self._eof = True
            n = min(want, len(self._pending))
            buf[:n] = self._pending[:n]
            del self._pending[:n]
            total += n
        return total

    def close(self) -> None:
        self._close()


def to_netascii(data: bytes) -> bytes:
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


# ------------------------------------------------------------- negotiation


@dataclass(frozen=True)
class Limits:
    """Server-side bounds: option values are clamped to these, retries give up after them."""

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    timeout: float = 1.0  # first retransmission when the client names no timeout
    max_timeout: float = 8.0  # backoff cap (a larger client timeout is kept as is)
    max_retries: int = 5
    max_unconfirmed_retries: int = 2  # before the client's first ACK: OACK resends, timeouts before giving up


@dataclass(frozen=True)
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0
    oack: dict[str, str] = field(default_factory=dict)  # empty: the client gets DATA 1 at once


def _int(value: str) -> int | None:
    v = value.strip()
    return int(v) if v.isascii() and v.isdigit() and len(v) <= 10 else None


def negotiate(options: dict[str, str], limits: Limits, size: int | None) -> Negotiated:
    """Answer the options we support; invalid values are ignored as if not sent (RFC 2347)."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.timeout
    oack: dict[str, str] = {}
    for name, value in options.items():
        n = _int(value)
        if name == "blksize" and n is not None and n >= MIN_BLKSIZE:
            blksize = min(n, MAX_BLKSIZE, limits.max_blksize)
            oack[name] = str(blksize)
        elif name == "windowsize" and n is not None and n >= 1:
            windowsize = min(n, MAX_WINDOWSIZE, limits.max_windowsize)
            oack[name] = str(windowsize)
        elif name == "timeout" and n is not None and MIN_TIMEOUT <= n <= MAX_TIMEOUT:
            timeout = float(n)  # RFC 2349: accept as sent or not at all
            oack[name] = str(n)
        elif name == "tsize" and n is not None and size is not None:
            oack[name] = str(size)
    return Negotiated(blksize, windowsize, timeout, oack)


# ----------------------------------------------------------- read transfer


_BLOCK = struct.Struct("!H")
_READ_BATCH, _BATCH_SLOTS = 1 << 14, 32  # a small window's ring grows to about this, so reads come in batches
_RING_MAX = 1 << 20  # above this, the ring holds one window and nothing is read ahead
INITIAL_WINDOW_BYTES = 1 << 16  # the first window after confirmation: about this much, at least one block
WHOLE_WINDOW_BYTES = 1 << 17  # a negotiated window this small starts whole (64 x 1,468-byte blocks: 94 KB)


class MemoryBudget:
    """The bytes every transfer's ring may hold together (`[tftp] max_memory_mib`).

    Shared by the transfers of one server; rings take from it as they grow
    and give back when they end. Pure bookkeeping: nothing is allocated here.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def give(self, n: int) -> None:
        self.used -= n


def _ring_slots(window: int, segment: int, confirmed: bool) -> int:
    """Ring slots for a window of `window` blocks: just the window before the client
    answered; then room to read ahead (two windows, or about 16 KiB / 32 slots for
    small ones), but one window when two would pass 1 MiB."""
    if not confirmed or 2 * window * segment > _RING_MAX:
        return window
    return window * max(2, min(_READ_BATCH // (window * segment), _BATCH_SLOTS // window))


class ReadTransfer:
    """One RRQ being served: feed it packets and timer ticks, send what it returns.

    Returned packets are views into the transfer's ring: send them before the
    next call. With `runs=True`, DATA comes as runs of consecutive packets
    (see the module notes) and `segment` is their size. `deadline` says when
    `on_timer` next has work; `done` ends the transfer, with `outcome` one of
    ok, timeout, aborted, error, busy (no memory for a first packet). `close()`
    gives the ring back and closes the source.
    """

    def __init__(self, request: Request, source: DataSource, limits: Limits = Limits(), runs: bool = False,
                 budget: MemoryBudget | None = None):
        self.request = request
        self.source = source
        self.limits = limits
        self.runs = runs
        self.budget = budget
        self.neg = negotiate(request.options, limits, source.size)
        self.segment = 4 + self.neg.blksize
        # The window grows from about INITIAL_WINDOW_BYTES to the negotiated one as ACKs come;
        # a window of up to WHOLE_WINDOW_BYTES is taken whole at once: an RFC 7440 client that
        # ACKs only at its window's end (atftp) would wait out its timeout for held-back blocks.
        if self.neg.windowsize * self.segment <= WHOLE_WINDOW_BYTES:
            self.window = self.neg.windowsize
        else:
            self.window = min(self.neg.windowsize, max(1, INITIAL_WINDOW_BYTES // self.segment))
        self._since_growth = 0  # blocks acknowledged at this window size
        self._nslots = 0
        self._ring = bytearray()
        self._view = memoryview(self._ring)
        self._payloads: list[memoryview] = []
        self._awaiting_oack_ack = bool(self.neg.oack)
        self.confirmed = False  # the client has acknowledged something from its address
        self.acked = 0  # absolute blocks the client has acknowledged
        self.sent = 0  # absolute blocks sent at least once
        self.read = 0  # absolute blocks read into the ring
        self.last: int | None = None  # absolute number of the final (short) block, once read
        self._last_len = 0  # its payload length
        self.bytes_sent = 0  # payload bytes, each counted once
        self.retransmits = 0
        self.retries = 0
        self.ignored = 0  # datagrams from the client's TID that were junk, stale or duplicate
        self.starved = 0  # ACKs ignored because the budget had no room for the ring
        self.deadline: float | None = None
        self.outcome: str | None = None
        self._closed = False
        # Lock-step (windowsize 1) once the client has answered: `on_packet` takes a short path,
        # and the shell may serve the rest from a thread of its own (server/tftp_server.py).
        self.lockstep = False

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def ring_bytes(self) -> int:
        """Bytes this transfer's ring holds now."""
        return len(self._ring)

    def start(self, now: float) -> list[bytes | memoryview]:
        self._arm(now)
        if self._awaiting_oack_ack:
            return [OAck(self.neg.oack).encode()]
        if not self._resize(_ring_slots(self.window, self.segment, False)):
            self._finish("busy")
            return []
        return self._window()

    def on_packet(self, packet: bytes, now: float) -> list[bytes | memoryview]:
        """A datagram from the client's TID. Junk and stale ACKs are ignored."""
        if self.outcome is not None:
            return []
        if len(packet) < 4 or packet[1] != ACK or packet[0]:  # hot path: no Packet object for an ACK
            if packet[:2] == b"\0\5":
                self._finish("aborted")
            else:
                self.ignored += 1
            return []
        block = packet[2] << 8 | packet[3]
        sent = self.sent
        if self.lockstep and block == sent & 0xFFFF and sent == self.acked + 1:
            # Lock-step, the ACK of the one block in flight: what `_window` would do for a
            # window of one, without its generality (the client waits on this path).
            self.acked = sent
            last = self.last
            if last is not None and sent >= last:
                self._finish("ok")
                return []
            self.retries = 0
            self.deadline = now + self.neg.timeout
            nxt = sent + 1
            if self.read < nxt:
                self._fill(nxt)
                last = self.last
            self.sent = nxt
            seg = self.segment
            off = (sent % self._nslots) * seg
            if nxt == last:
                self.bytes_sent += self._last_len
                return [self._view[off : off + 4 + self._last_len]]
            self.bytes_sent += seg - 4
            return [self._view[off : off + seg]]
        if self._awaiting_oack_ack:
            if block != 0:
                self.ignored += 1
                return []
            if not self._resize(_ring_slots(self.window, self.segment, True)):
                self.starved += 1  # as if lost: the client repeats its ACK, or the OACK timer runs out
                return []
            self._awaiting_oack_ack = False
            self.confirmed = True
            self.lockstep = self.neg.windowsize == 1
        else:
            delta = (block - self.acked) & 0xFFFF
            if delta == 0 or delta > self.sent - self.acked:
                self.ignored += 1
                return []  # duplicate or stale: never answered (Sorcerer's Apprentice)
            self.acked += delta
            if self.last is not None and self.acked >= self.last:
                self._finish("ok")
                return []
            if not self.confirmed:
                self.confirmed = True
                self.lockstep = self.neg.windowsize == 1
                self._resize(_ring_slots(self.window, self.segment, True))
            else:
                self._grow(delta)
        self.retries = 0
        self.deadline = now + self.neg.timeout
        return self._window()

    def on_timer(self, now: float) -> list[bytes | memoryview]:
        """Retransmit the unacknowledged window with backoff, or give up.

        Before the client's first ACK: at most `max_unconfirmed_retries`
        timeouts, resending only the small OACK (a DATA 1 is never resent to
        an address that has not answered)."""
        if self.done or self.deadline is None or now < self.deadline:
            return []
        self.retries += 1
        limit = self.limits.max_retries if self.confirmed else min(self.limits.max_retries,
                                                                  self.limits.max_unconfirmed_retries)
        if self.retries > limit:
            self._finish("timeout")
            return [Error(ErrorCode.NOT_DEFINED, "timed out").encode()] if self.confirmed else []
        cap = max(self.neg.timeout, self.limits.max_timeout)
        self.deadline = now + min(self.neg.timeout * 2**self.retries, cap)
        if self._awaiting_oack_ack:
            self.retransmits += 1
            return [OAck(self.neg.oack).encode()]
        if not self.confirmed:
            return []
        return self._window()

    def read_ahead(self) -> None:
        """Read the blocks after the window into free ring slots, in one batch.

        Call it right after sending: the read then overlaps the client's work
        instead of delaying the answer to its next ACK.
        """
        if self.outcome is not None or not self.confirmed or self.last is not None:
            return
        n = self._nslots
        if self.acked + n - self.read >= n // 2:
            self._fill(self.acked + self._nslots)

    def detach_budget(self) -> int:
        """Stop taking from and giving to the shared budget: the transfer goes on in another
        thread, and the budget belongs to the one that holds the others. Returns the bytes
        the ring holds now, for the caller to give back when the transfer ends. A lock-step
        transfer's ring never grows again, so nothing is taken unaccounted."""
        self.budget = None
        return len(self._ring)

    def fail(self, message: str) -> list[bytes]:
        """The data source failed (an I/O error): end with outcome `error` and tell the client."""
        self._finish("error")
        return [Error(ErrorCode.NOT_DEFINED, message).encode()]

    def close(self, outcome: str = "aborted") -> None:
        """The transfer is over for the caller: give the ring back and close the source (once).

        `outcome` is recorded if the transfer had none yet (the caller ended it)."""
        if self.outcome is None:
            self._finish(outcome)
        self._release()
        if not self._closed:
            self._closed = True
            self.source.close()

    def _arm(self, now: float) -> None:
        self.retries = 0
        self.deadline = now + self.neg.timeout

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        self.deadline = None
        self._release()

    def _release(self) -> None:
        if self.budget is not None:
            self.budget.give(len(self._ring))
        self._payloads = []
        self._view = memoryview(b"")
        self._ring = bytearray()
        self._nslots = 0

    def _grow(self, delta: int) -> None:
        """A whole window acknowledged: double it (up to the negotiated one), if the budget lets the ring grow."""
        self._since_growth += delta
        if self._since_growth < self.window or self.window >= self.neg.windowsize:
            return
        self._since_growth = 0
        window = min(2 * self.window, self.neg.windowsize)
        if self._resize(_ring_slots(window, self.segment, True)):
            self.window = window

    def _resize(self, nslots: int) -> bool:
        """Make the ring `nslots` packets long (never shorter), keeping the unacknowledged blocks it holds."""
        old_n, seg = self._nslots, self.segment
        if nslots <= old_n:
            return True
        if self.budget is not None and not self.budget.take((nslots - old_n) * seg):
            return False
        ring = bytearray(nslots * seg)
        ring[1::seg] = bytes([DATA]) * nslots  # opcodes once; block numbers per read
        old = self._view
        for b in range(self.acked + 1, self.read + 1):  # read but not acknowledged: numbered already
            src, dst = ((b - 1) % old_n) * seg, ((b - 1) % nslots) * seg
            ring[dst : dst + seg] = old[src : src + seg]
        self._ring, self._nslots = ring, nslots
        self._view = view = memoryview(ring)
        self._payloads = [view[i * seg + 4 : (i + 1) * seg] for i in range(nslots)]
        return True

    def _fill(self, upto: int) -> None:
        """Read blocks read+1 .. upto (never past the last) into their slots and number them."""
        first, n = self.read + 1, self._nslots
        count = min(upto, self.acked + n) - self.read
        if count <= 0 or self.last is not None:
            return
        bs, seg = self.neg.blksize, self.segment
        slot = (first - 1) % n
        bufs = self._payloads[slot : slot + count]
        if slot + count > n:
            bufs += self._payloads[: slot + count - n]
        got = self.source.readinto(bufs, self.read)
        if got < count * bs:
            count = got // bs + 1
            self.last, self._last_len = self.read + count, got % bs
        ring, off, end, pack = self._ring, slot * seg + 2, n * seg, _BLOCK.pack_into
        for b in range(first, first + count):
            pack(ring, off, b & 0xFFFF)
            off += seg
            if off >= end:
                off = 2
        self.read += count

    def _window(self) -> list[bytes | memoryview]:
        """Blocks acked+1 .. acked+window, from the ring; what is not read yet is read now."""
        end = self.acked + self.window
        if self.read < end:
            self._fill(end)
        last = self.last
        if last is not None and last < end:
            end = last
        first, sent = self.acked + 1, self.sent
        if end > sent:
            self.retransmits += sent - self.acked
            self.bytes_sent += (end - sent) * self.neg.blksize
            if end == last:
                self.bytes_sent -= self.neg.blksize - self._last_len
            self.sent = end
        elif end >= first:
            self.retransmits += end - self.acked
        if end < first:
            return []
        seg, n, view = self.segment, self._nslots, self._view
        tail = 4 + self._last_len if end == last else seg  # size of the window's final packet
        slot, count = (first - 1) % n, end - first + 1
        if not self.runs:
            packets: list[bytes | memoryview] = [view[((b - 1) % n) * seg : ((b - 1) % n + 1) * seg]
                                                 for b in range(first, end)]
            packets.append(view[((end - 1) % n) * seg : ((end - 1) % n) * seg + tail])
            return packets
        if slot + count <= n:
            return [view[slot * seg : (slot + count - 1) * seg + tail]]
        return [view[slot * seg :], view[: (slot + count - n - 1) * seg + tail]]


def error_packet(code: ErrorCode, message: str) -> bytes:
    return Error(code, message).encode()
