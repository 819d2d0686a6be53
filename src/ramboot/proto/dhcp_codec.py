"""DHCPv4 wire format (RFC 2131, 2132, 3396, 4578, 3046, 3004): a pure codec.

`decode()` turns a datagram into a `DhcpPacket`, or raises `DhcpDecodeError`
for anything malformed: short headers, a bad magic cookie, an option running
past its field, a known option with the wrong length. Options are kept as raw
bytes keyed by code, already concatenated across repeats and across the
overloaded `file`/`sname` fields (RFC 3396), so callers never see the split.
`encode()` does the reverse: long options are split, and when the options do
not fit the message size the client accepts, the `file` and `sname` fields
are overloaded (option 52).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from .pxe import uuid_from_wire

MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_LEN = HEADER.size  # 236
MIN_LEN = HEADER_LEN + len(MAGIC)
BOOTP_MIN_LEN = 300  # RFC 1542 §2.1: some relays and ROMs drop shorter messages
DEFAULT_MAX_MESSAGE = 576  # RFC 2131 §2: every client accepts a 576-octet IP datagram
IP_UDP_HEADERS = 28

BOOTREQUEST = 1
BOOTREPLY = 2
FLAG_BROADCAST = 0x8000
ZERO_IP = "0.0.0.0"


class DhcpDecodeError(ValueError):
    """The datagram is not a well-formed DHCP/BOOTP message; `reason` is a short label for metrics."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


class DhcpEncodeError(ValueError):
    """The message cannot be encoded (e.g. options exceed the client's size)."""


class MsgType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Opt(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN = 15
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAM_REQUEST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    RELAY_AGENT = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_UUID = 97
    IPXE_ENCAP = 175
    END = 255


# iPXE's encapsulated option (src/include/ipxe/dhcp.h, option 175) that skips ProxyDHCP.
IPXE_NO_PXEDHCP = 176
# PXE vendor options (option 43 when option 60 is "PXEClient"; PXE 2.1 spec).
PXE_DISCOVERY_CONTROL = 6
PXE_DISCOVERY_USE_BOOTFILE = 0x08  # bit 3: no boot server discovery, use the file given

# Exact or modular lengths of the options whose form RFC 2132 & co. fix.
_FIXED_LEN: dict[int, int] = {
    Opt.SUBNET_MASK: 4,
    Opt.REQUESTED_IP: 4,
    Opt.LEASE_TIME: 4,
    Opt.OVERLOAD: 1,
    Opt.MESSAGE_TYPE: 1,
    Opt.SERVER_ID: 4,
    Opt.MAX_MESSAGE_SIZE: 2,
    Opt.RENEWAL_TIME: 4,
    Opt.REBINDING_TIME: 4,
    Opt.CLIENT_NDI: 3,
    Opt.CLIENT_UUID: 17,
}
_MULTIPLE_OF: dict[int, int] = {Opt.ROUTER: 4, Opt.DNS: 4, Opt.CLIENT_ARCH: 2}
_MIN_LEN: dict[int, int] = {Opt.CLIENT_ID: 2, Opt.PARAM_REQUEST: 1, Opt.VENDOR_CLASS: 1, Opt.USER_CLASS: 1,
                            Opt.HOSTNAME: 1}
_CHECKED = frozenset(_FIXED_LEN) | frozenset(_MULTIPLE_OF) | frozenset(_MIN_LEN)


@dataclass
class DhcpPacket:
    """One DHCP message. Addresses are dotted strings; options are raw bytes by code."""

    op: int = BOOTREQUEST
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = ZERO_IP
    yiaddr: str = ZERO_IP
    siaddr: str = ZERO_IP
    giaddr: str = ZERO_IP
    chaddr: bytes = bytes(16)
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    # -- typed views of the options the server needs ----------------------
    @property
    def msg_type(self) -> int | None:
        v = self.options.get(Opt.MESSAGE_TYPE)
        return v[0] if v else None

    @property
    def mac(self) -> str | None:
        """`aa:bb:...` for Ethernet clients, else None (we boot only Ethernet)."""
        if self.htype != 1 or self.hlen != 6:
            return None
        return self.chaddr[:6].hex(":")

    @property
    def broadcast_flag(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    def ip_option(self, code: int) -> str | None:
        v = self.options.get(code)
        return _ip(v) if v and len(v) == 4 else None

    def u32_option(self, code: int) -> int | None:
        v = self.options.get(code)
        return struct.unpack("!I", v)[0] if v and len(v) == 4 else None

    @property
    def requested_ip(self) -> str | None:
        return self.ip_option(Opt.REQUESTED_IP)

    @property
    def server_id(self) -> str | None:
        return self.ip_option(Opt.SERVER_ID)

    @property
    def max_message_size(self) -> int:
        v = self.options.get(Opt.MAX_MESSAGE_SIZE)
        return max(DEFAULT_MAX_MESSAGE, struct.unpack("!H", v)[0]) if v else DEFAULT_MAX_MESSAGE

    @property
    def client_id(self) -> bytes | None:
        return self.options.get(Opt.CLIENT_ID)

    @property
    def vendor_class(self) -> str:
        return self.options.get(Opt.VENDOR_CLASS, b"").decode("latin-1")

    @property
    def user_classes(self) -> list[str]:
        v = self.options.get(Opt.USER_CLASS)
        return parse_user_class(v) if v else []

    @property
    def arch(self) -> int | None:
        """The first architecture in option 93 (RFC 4578 §2.1)."""
        v = self.options.get(Opt.CLIENT_ARCH)
        return struct.unpack("!H", v[:2])[0] if v else None

    @property
    def uuid(self) -> str | None:
        """Option 97's GUID (type 0) in the form SMBIOS tools print (`pxe.uuid_from_wire`);
        None if absent, not type 0, or null."""
        v = self.options.get(Opt.CLIENT_UUID)
        if not v or v[0] != 0:
            return None
        return uuid_from_wire(v[1:17])

    @property
    def param_request(self) -> bytes:
        return self.options.get(Opt.PARAM_REQUEST, b"")

    @property
    def boot_file(self) -> str:
        """Option 67 if present, else the `file` field (RFC 2132 §9.5)."""
        v = self.options.get(Opt.BOOTFILE)
        raw = v if v is not None else self.file
        return raw.split(b"\0", 1)[0].decode("latin-1")


def parse_user_class(v: bytes) -> list[str]:
    """RFC 3004 length-prefixed classes; many clients (iPXE, udhcpc) send one bare string."""
    out, i = [], 0
    while i < len(v):
        n = v[i]
        if n == 0 or i + 1 + n > len(v):
            return [v.decode("latin-1")]
        out.append(v[i + 1 : i + 1 + n].decode("latin-1"))
        i += 1 + n
    return out


_ip = socket.inet_ntoa  # 4 bytes -> dotted quad


def _parse_field(buf: bytes, out: dict[int, bytes], where: str, need_end: bool) -> None:
    """Options from one field into `out`, concatenating repeats (RFC 3396 §7)."""
    i, n = 0, len(buf)
    while i < n:
        code = buf[i]
        if code == Opt.PAD:
            i += 1
            continue
        if code == Opt.END:
            return
        if i + 1 >= n:
            raise DhcpDecodeError(f"{where}: option {code} has no length byte", "bad-option")
        length = buf[i + 1]
        end = i + 2 + length
        if end > n:
            raise DhcpDecodeError(f"{where}: option {code} claims {length} bytes, {n - i - 2} left", "bad-option")
        data = buf[i + 2 : end]
        prev = out.get(code)
        out[code] = data if prev is None else prev + data
        i = end
    if need_end:
        raise DhcpDecodeError(f"{where}: no end option", "bad-option")


def _check_lengths(opts: dict[int, bytes]) -> None:
    for code in opts.keys() & _CHECKED:
        v = opts[code]
        want = _FIXED_LEN.get(code)
        if want is not None and len(v) != want:
            raise DhcpDecodeError(f"option {code}: length {len(v)}, must be {want}", "bad-length")
        mod = _MULTIPLE_OF.get(code)
        if mod is not None and (not v or len(v) % mod):
            raise DhcpDecodeError(f"option {code}: length {len(v)}, must be a non-zero multiple of {mod}", "bad-length")
        least = _MIN_LEN.get(code)
        if least is not None and len(v) < least:
            raise DhcpDecodeError(f"option {code}: length {len(v)}, must be at least {least}", "bad-length")
    mt = opts.get(Opt.MESSAGE_TYPE)
    if mt is not None and not 1 <= mt[0] <= 18:
        raise DhcpDecodeError(f"option 53: unknown message type {mt[0]}", "bad-type")
    mms = opts.get(Opt.MAX_MESSAGE_SIZE)
    if mms is not None and struct.unpack("!H", mms)[0] < DEFAULT_MAX_MESSAGE:
        raise DhcpDecodeError("option 57: below the legal minimum of 576", "bad-length")


def decode(data: bytes) -> DhcpPacket:
    """Parse one datagram; raises `DhcpDecodeError` for anything malformed."""
    if len(data) < MIN_LEN:
        raise DhcpDecodeError(f"{len(data)} bytes, shorter than a DHCP header ({MIN_LEN})", "short")
    op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file = HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpDecodeError(f"op {op} is neither BOOTREQUEST nor BOOTREPLY", "bad-op")
    if hlen > 16:
        raise DhcpDecodeError(f"hlen {hlen} exceeds the 16-byte chaddr field", "bad-hlen")
    if data[HEADER_LEN:MIN_LEN] != MAGIC:
        raise DhcpDecodeError("bad magic cookie (BOOTP without DHCP options is not served)", "bad-cookie")
    opts: dict[int, bytes] = {}
    _parse_field(data[MIN_LEN:], opts, "options", need_end=False)
    overload = opts.pop(Opt.OVERLOAD, None)  # framing, not content: callers never see it
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise DhcpDecodeError("option 52: must be one byte of value 1, 2 or 3", "bad-overload")
        # RFC 3396 §7: the order is options, then file, then sname.
        if overload[0] & 1:
            _parse_field(file, opts, "file", need_end=True)
            file = b""
        if overload[0] & 2:
            _parse_field(sname, opts, "sname", need_end=True)
            sname = b""
    _check_lengths(opts)
    return DhcpPacket(
        op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs, flags=flags,
        ciaddr=_ip(ci), yiaddr=_ip(yi), siaddr=_ip(si), giaddr=_ip(gi),
        chaddr=chaddr, sname=sname.split(b"\0", 1)[0], file=file.split(b"\0", 1)[0], options=opts,
    )


def _chunks(code: int, value: bytes) -> list[bytes]:
    """One option as wire chunks; values over 255 bytes repeat the code (RFC 3396 §5)."""
    if len(value) <= 255:
        return [bytes((code, len(value))) + value]
    return [bytes((code, len(part))) + part for part in (value[i : i + 255] for i in range(0, len(value), 255))]


def _pack_fields(options: list[tuple[int, bytes]], caps: list[int]) -> list[bytes]:
    """Fill fields of the given capacities in order (options, file, sname).

    An option of up to 255 bytes is never split (clients without RFC 3396
    would misread it); a longer one is cut to fill each field's remaining room.
    """
    fields: list[bytearray] = [bytearray() for _ in caps]
    slot = 0
    for code, value in options:
        if len(value) <= 255:
            wire = bytes((code, len(value))) + value
            while slot < len(caps) and len(fields[slot]) + len(wire) > caps[slot]:
                slot += 1
            if slot == len(caps):
                raise DhcpEncodeError("options exceed the client's message size")
            fields[slot] += wire
            continue
        rest = value
        while rest:
            room = min(255, caps[slot] - len(fields[slot]) - 2) if slot < len(caps) else 0
            if room <= 0:
                slot += 1
                if slot == len(caps):
                    raise DhcpEncodeError("options exceed the client's message size")
                continue
            fields[slot] += bytes((code, min(room, len(rest)))) + rest[:room]
            rest = rest[room:]
    return [bytes(f) for f in fields]


_FRAMING = frozenset({Opt.PAD, Opt.END, Opt.OVERLOAD})


def _not_message_type(item: tuple[int, bytes]) -> bool:
    return item[0] != 53


def encode(pkt: DhcpPacket, max_message: int | None = None) -> bytes:
    """Serialise, overloading `file` then `sname` (option 52) if the options do not fit.

    `max_message` is the IP datagram size the peer accepts (option 57), 576 by default.
    """
    if len(pkt.sname) > 63 or len(pkt.file) > 127:
        raise DhcpEncodeError("sname/file too long for their fields (63/127 bytes)")
    limit = (max_message or DEFAULT_MAX_MESSAGE) - IP_UDP_HEADERS - MIN_LEN
    options, sname, file = pkt.options, pkt.sname, pkt.file
    # Replies to one kind of client share every option (lease times, mask, boot file...):
    # the options part is made once per distinct set and reused, only the header is packed
    # per packet. A pure function of the key, so the bytes are the same as made afresh.
    key = (tuple(options.items()), limit, sname, file)
    try:
        hit = _BODIES.get(key)
    except TypeError:  # an unhashable value (a bytearray): made afresh, not kept
        hit = _body(_as_bytes(options), limit, bytes(sname), bytes(file))
    else:
        if hit is None:
            hit = _body(options, limit, sname, file)
            if len(_BODIES) >= _BODIES_MAX:
                _BODIES.clear()
            _BODIES[key] = hit
    body, sname, file = hit
    head = HEADER.pack(
        pkt.op, pkt.htype, pkt.hlen, pkt.hops, pkt.xid, pkt.secs, pkt.flags,
        socket_aton(pkt.ciaddr), socket_aton(pkt.yiaddr), socket_aton(pkt.siaddr), socket_aton(pkt.giaddr),
        pkt.chaddr.ljust(16, b"\0")[:16], sname, file,
    )
    return (head + MAGIC + body).ljust(BOOTP_MIN_LEN, b"\0")


_BODIES: dict[tuple[tuple[tuple[int, bytes], ...], int, bytes, bytes], tuple[bytes, bytes, bytes]] = {}
_BODIES_MAX = 512


def _body(options: dict[int, bytes], limit: int, sname: bytes, file: bytes) -> tuple[bytes, bytes, bytes]:
    """The options part of a message (magic cookie excluded), with `sname` and `file` as overloaded."""
    # Message type first: some ROMs look for it there.
    opts = [(c, v) for c, v in options.items() if c not in _FRAMING]
    if Opt.MESSAGE_TYPE in options:
        opts.sort(key=_not_message_type)  # stable: the others keep their order
    plain = b"".join([bytes((c, len(v))) + v if len(v) <= 255 else b"".join(_chunks(c, v)) for c, v in opts])
    if len(plain) + 1 <= limit:
        body = plain + b"\xff"
    else:
        # Fields we may overload, in RFC 3396 order; each field ends with its own END.
        spare = ([(1, 128)] if not file else []) + ([(2, 64)] if not sname else [])
        caps = [limit - 3 - 1] + [cap - 1 for _, cap in spare]  # option 52 and END in the options field
        main, *extra = _pack_fields(opts, caps)
        overload = 0
        for (bit, cap), blob in zip(spare, extra, strict=True):
            if not blob:
                continue
            overload |= bit
            blob = (blob + b"\xff").ljust(cap, b"\0")
            if bit == 1:
                file = blob
            else:
                sname = blob
        body = bytes((Opt.OVERLOAD, 1, overload)) + main + b"\xff"
    return body, sname, file


def _as_bytes(options: Mapping[int, object]) -> dict[int, bytes]:
    """`options` with bytes-like values as bytes (the compiled `_body` takes bytes only, as its type says)."""
    out: dict[int, bytes] = {}
    for code, v in options.items():
        if isinstance(v, bytearray | memoryview):
            v = bytes(v)
        if not isinstance(v, bytes):
            raise DhcpEncodeError(f"option {code}: {type(v).__name__}, not bytes")
        out[code] = v
    return out


def socket_aton(ip: str) -> bytes:
    try:
        return socket.inet_aton(ip) if ip.count(".") == 3 else ipaddress.IPv4Address(ip).packed
    except OSError:
        raise DhcpEncodeError(f"not an IPv4 address: {ip!r}") from None


def decode_suboptions(v: bytes) -> dict[int, bytes]:
    """Encapsulated options (43, 82, 175): code/length/value, PAD and END honoured."""
    out: dict[int, bytes] = {}
    _parse_field(v, out, "encapsulated", need_end=False)
    return out


def encode_suboptions(subs: dict[int, bytes], end: bool = False) -> bytes:
    if any(len(val) > 255 for val in subs.values()):
        raise DhcpEncodeError("an encapsulated option exceeds 255 bytes")
    out = b"".join(bytes((code, len(val))) + val for code, val in subs.items())
    return out + (b"\xff" if end else b"")
