"""DHCPv6 wire format (RFC 8415), with the network boot options of RFC 5970 and RFC 6939.

Pure functions over bytes. A message keeps its options as an ordered list of
(code, value) pairs: DHCPv6 repeats options (one IA_NA per interface, one
IAADDR per address, vendor classes per enterprise) and the order is part of
what a golden reply compares. Anything malformed raises `Dhcp6DecodeError`
with a one-word reason for the metrics.
"""

from __future__ import annotations

import socket
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import IntEnum

SERVER_PORT = 547
CLIENT_PORT = 546
ALL_SERVERS = "ff02::1:2"  # All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1)
HOP_COUNT_LIMIT = 8  # RFC 8415 §7.6
MAX_RELAY_DEPTH = HOP_COUNT_LIMIT + 1
# The enterprise number that UEFI firmwares put in their vendor class (edk2's
# PXEBC_DHCP6_ENTERPRISE_NUM and HTTP_BOOT_DHCP6_ENTERPRISE_NUM: Intel's, 343).
ENTERPRISE_UEFI = 343
HWTYPE_ETHERNET = 1


class Msg(IntEnum):
    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


class Opt(IntEnum):
    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IA_TA = 4
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    RELAY_MSG = 9
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    USER_CLASS = 15
    VENDOR_CLASS = 16
    VENDOR_OPTS = 17
    INTERFACE_ID = 18
    DNS_SERVERS = 23
    DOMAIN_LIST = 24
    BOOTFILE_URL = 59  # RFC 5970
    BOOTFILE_PARAM = 60
    CLIENT_ARCH_TYPE = 61
    NII = 62
    CLIENT_LINKLAYER_ADDR = 79  # RFC 6939, added by relays


class Status(IntEnum):
    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5


class Duid(IntEnum):
    LLT = 1
    EN = 2
    LL = 3
    UUID = 4


class Dhcp6DecodeError(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Options = list[tuple[int, bytes]]


def ntop(packed: bytes) -> str:
    """16 bytes as RFC 5952 text (the C library's; `ipaddress` costs ten times more per packet)."""
    return socket.inet_ntop(socket.AF_INET6, packed)


def pton(text: str) -> bytes:
    """IPv6 text as 16 bytes; ValueError if it is none."""
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        raise ValueError(f"not an IPv6 address: {text!r}") from None


def _get(options: Options, code: int) -> bytes | None:
    for c, v in options:
        if c == code:
            return v
    return None


@dataclass
class Message:
    """A client or server message: type, 24-bit transaction id, options in order."""

    msg_type: int
    txid: int
    options: Options = field(default_factory=list)

    def get(self, code: int) -> bytes | None:
        return _get(self.options, code)

    def all(self, code: int) -> list[bytes]:
        return [v for c, v in self.options if c == code]


@dataclass
class RelayMessage:
    """RELAY-FORW or RELAY-REPL (RFC 8415 §9): the relay's addresses and its options,
    one of which (RELAY_MSG) carries the message it relays."""

    msg_type: int
    hop_count: int
    link_address: str
    peer_address: str
    options: Options = field(default_factory=list)

    def get(self, code: int) -> bytes | None:
        return _get(self.options, code)


_HEAD = struct.Struct("!HH")  # an option's code and length
_IA = struct.Struct("!HHIII")  # an IA_NA option's head: code, length, IAID, T1, T2
_IAADDR = struct.Struct("!HH16sII")  # an IAADDR option without options of its own


def decode_options(data: bytes, reason: str = "options") -> Options:
    out: Options = []
    i, n = 0, len(data)
    unpack = _HEAD.unpack_from
    while i < n:
        if i + 4 > n:
            raise Dhcp6DecodeError(reason + "-truncated")
        code, length = unpack(data, i)
        i += 4
        if i + length > n:
            raise Dhcp6DecodeError(reason + "-overrun")
        out.append((code, data[i:i + length]))
        i += length
    return out


def option(code: int, value: bytes) -> bytes:
    """One option on the wire (a server's replies are built from these, constant ones encoded once)."""
    if len(value) > 0xFFFF:
        raise ValueError(f"option {code} too long")
    return _HEAD.pack(code, len(value)) + value


def encode_options(options: Options) -> bytes:
    return b"".join([option(code, value) for code, value in options])


def ia_na_option(iaid: int, t1: int, t2: int, inner: bytes) -> bytes:
    """An IA_NA option (3) around its already encoded options: `encode_ia_na` without the objects."""
    if len(inner) > 0xFFFF - 12:
        raise ValueError("IA_NA too long")
    return _IA.pack(Opt.IA_NA, 12 + len(inner), iaid, t1, t2) + inner


def iaaddr_option(addr: bytes, preferred: int, valid: int) -> bytes:
    """An IAADDR option (5) for a 16-byte address, with no options inside."""
    return _IAADDR.pack(Opt.IAADDR, 24, addr, preferred, valid)


def decode(data: bytes) -> Message | RelayMessage:
    if len(data) < 4:
        raise Dhcp6DecodeError("short")
    mt = data[0]
    if mt in (Msg.RELAY_FORW, Msg.RELAY_REPL):
        if len(data) < 34:
            raise Dhcp6DecodeError("short-relay")
        link, peer = ntop(data[2:18]), ntop(data[18:34])
        return RelayMessage(mt, data[1], link, peer, decode_options(data[34:]))
    if mt == 0 or mt > Msg.RELAY_REPL:
        raise Dhcp6DecodeError("unknown-type")
    return Message(mt, int.from_bytes(data[1:4], "big"), decode_options(data[4:]))


def header(msg_type: int, txid: int) -> bytes:
    """A client or server message's first four bytes: its type and 24-bit transaction id."""
    return (((msg_type & 0xFF) << 24) | (txid & 0xFFFFFF)).to_bytes(4, "big")


def encode(msg: Message | RelayMessage) -> bytes:
    if isinstance(msg, RelayMessage):
        head = bytes((msg.msg_type, msg.hop_count)) + pton(msg.link_address) + pton(msg.peer_address)
        return head + encode_options(msg.options)
    return header(msg.msg_type, msg.txid) + encode_options(msg.options)


# -- IA_NA and its addresses -----------------------------------------------------


@dataclass
class IaAddr:
    addr: str
    preferred: int
    valid: int
    options: Options = field(default_factory=list)


@dataclass
class IaNa:
    iaid: int
    t1: int
    t2: int
    options: Options = field(default_factory=list)

    def addresses(self) -> list[IaAddr]:
        return [decode_iaaddr(v) for c, v in self.options if c == Opt.IAADDR]


def decode_ia_na(data: bytes) -> IaNa:
    if len(data) < 12:
        raise Dhcp6DecodeError("short-ia-na")
    iaid, t1, t2 = struct.unpack_from("!III", data)
    return IaNa(iaid, t1, t2, decode_options(data[12:], "ia-na"))


def encode_ia_na(ia: IaNa) -> bytes:
    return struct.pack("!III", ia.iaid, ia.t1, ia.t2) + encode_options(ia.options)


def decode_iaaddr(data: bytes) -> IaAddr:
    if len(data) < 24:
        raise Dhcp6DecodeError("short-iaaddr")
    pref, valid = struct.unpack_from("!II", data, 16)
    return IaAddr(ntop(data[:16]), pref, valid, decode_options(data[24:], "iaaddr"))


def encode_iaaddr(a: IaAddr) -> bytes:
    return pton(a.addr) + struct.pack("!II", a.preferred, a.valid) + encode_options(a.options)


def status(code: Status, message: str = "") -> tuple[int, bytes]:
    return Opt.STATUS_CODE, struct.pack("!H", code) + message.encode()


# -- what a client says about itself ------------------------------------------------


_DUID_LLT_ETHER = struct.pack("!HH", Duid.LLT, HWTYPE_ETHERNET)
_DUID_LL_ETHER = struct.pack("!HH", Duid.LL, HWTYPE_ETHERNET)
_DUID_UUID = struct.pack("!H", Duid.UUID)
_ETHER = struct.pack("!H", HWTYPE_ETHERNET)
_LINK_LOCAL64 = bytes.fromhex("fe80000000000000")


def duid_mac(duid: bytes) -> str | None:
    """The Ethernet MAC inside a DUID-LLT or DUID-LL, else None (DUID-EN and DUID-UUID carry none)."""
    if duid[:4] == _DUID_LLT_ETHER and len(duid) == 14:
        return duid[8:14].hex(":")
    if duid[:4] == _DUID_LL_ETHER and len(duid) == 10:
        return duid[4:10].hex(":")
    return None


def duid_uuid(duid: bytes) -> str | None:
    """The UUID of a DUID-UUID (RFC 6355; iPXE and edk2 build it from SMBIOS), else None."""
    if len(duid) == 18 and duid[:2] == _DUID_UUID:
        raw = bytes(duid[2:])
        return None if raw in (bytes(16), b"\xff" * 16) else str(uuidlib.UUID(bytes=raw))
    return None


def linklayer_mac(value: bytes) -> str | None:
    """RFC 6939 option 79: link-layer type (2 bytes), then the address."""
    if len(value) == 8 and value[:2] == _ETHER:
        return value[2:].hex(":")
    return None


def eui64_mac(addr: str) -> str | None:
    """The MAC behind a modified-EUI-64 link-local address (RFC 4291 appendix A), else None."""
    try:
        a = pton(addr.split("%")[0])
    except ValueError:
        return None
    if a[:8] != _LINK_LOCAL64 or a[11:13] != b"\xff\xfe":
        return None
    return (bytes((a[8] ^ 2,)) + a[9:11] + a[13:16]).hex(":")


def class_data(value: bytes, skip: int = 0) -> list[bytes]:
    """The opaque items of a user class (15) or, after the 4-byte enterprise number, a vendor
    class (16): each a 2-byte length and its bytes. A truncated item ends the list."""
    out, i = [], skip
    while i + 2 <= len(value):
        (n,) = struct.unpack_from("!H", value, i)
        if i + 2 + n > len(value):
            break
        out.append(value[i + 2:i + 2 + n])
        i += 2 + n
    return out


def vendor_class(value: bytes) -> tuple[int, list[bytes]]:
    if len(value) < 4:
        raise Dhcp6DecodeError("short-vendor-class")
    return struct.unpack_from("!I", value)[0], class_data(value, 4)


def encode_vendor_class(enterprise: int, *items: bytes) -> bytes:
    return struct.pack("!I", enterprise) + b"".join(struct.pack("!H", len(i)) + i for i in items)


def client_arches(value: bytes) -> list[int]:
    """RFC 5970 option 61: a list of 16-bit architecture types (RFC 4578's numbers)."""
    return [struct.unpack_from("!H", value, i)[0] for i in range(0, len(value) - 1, 2)]


def encode_domains(names: list[str]) -> bytes:
    """RFC 1035 §3.1 names, uncompressed (option 24)."""
    out = b""
    for name in names:
        for label in name.strip(".").split("."):
            b = label.encode()
            out += bytes((len(b),)) + b
        out += b"\x00"
    return out
