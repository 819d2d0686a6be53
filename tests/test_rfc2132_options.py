"""RFC 2132 (and 3004, 4578, 3046) options: typed views, strict lengths, typed errors."""

from __future__ import annotations

import struct

import pytest

from dhcp_pkt import GOLDEN
from ramboot.proto.dhcp_codec import (
    MAGIC,
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    Opt,
    decode,
    decode_suboptions,
    encode,
    encode_suboptions,
    parse_user_class,
)


def raw(options: bytes, **hdr) -> bytes:
    """A BOOTREQUEST header (chaddr 52:54:00:00:00:01) followed by the given option bytes."""
    head = bytearray(236)
    head[0], head[1], head[2] = hdr.get("op", 1), 1, hdr.get("hlen", 6)
    head[28:34] = bytes.fromhex("525400000001")
    return bytes(head) + MAGIC + options


@pytest.mark.parametrize(
    "opts, attr, expected",
    [
        (b"\x35\x01\x01\xff", "msg_type", 1),
        (b"\x35\x01\x03\x32\x04\x0a\x00\x00\x05\xff", "requested_ip", "10.0.0.5"),
        (b"\x36\x04\xc0\xa8\x01\x01\xff", "server_id", "192.168.1.1"),
        (b"\x39\x02\x05\xdc\xff", "max_message_size", 1500),
        (b"\xff", "max_message_size", 576),
        (b"\x3c\x09PXEClient\xff", "vendor_class", "PXEClient"),
        (b"\x3d\x07\x01\x52\x54\x00\x00\x00\x01\xff", "client_id", b"\x01\x52\x54\x00\x00\x00\x01"),
        (b"\x5d\x02\x00\x07\xff", "arch", 7),
        (b"\x5d\x04\x00\x10\x00\x07\xff", "arch", 16),  # several arches: the first is preferred
        (b"\x4d\x04iPXE\xff", "user_classes", ["iPXE"]),  # iPXE's bare string
        (b"\x4d\x0a\x04iPXE\x04boot\xff", "user_classes", ["iPXE", "boot"]),  # RFC 3004 form
        # EFI GUID order on the wire (RFC 4578 §2.3, iPXE, edk2): the first three fields little-endian
        (b"\x61\x11\x00" + bytes(range(16)) + b"\xff", "uuid", "03020100-0504-0706-0809-0a0b0c0d0e0f"),
        (b"\x61\x11\x00" + bytes(16) + b"\xff", "uuid", None),  # QEMU without -uuid: no identity
        (b"\x61\x11\x01" + bytes(16) + b"\xff", "uuid", None),  # only type 0 is a GUID
        (b"\x37\x03\x01\x03\x43\xff", "param_request", b"\x01\x03\x43"),
        (b"\x43\x0bpxelinux.0\x00\xff", "boot_file", "pxelinux.0"),
        (b"\x00\x00\x35\x01\x01\x00\xff", "msg_type", 1),  # PAD anywhere
        (b"\x35\x01\x01", "msg_type", 1),  # no END: tolerated in the options field
    ],
)
def test_typed_views(opts, attr, expected):
    assert getattr(decode(raw(opts)), attr) == expected


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "shorter"),
        (raw(b"")[:239], "shorter"),
        (raw(b"\xff", op=3), "op 3"),
        (raw(b"\xff", hlen=17), "hlen"),
        (raw(b"\xff")[:236] + b"\x63\x82\x53\x64\xff", "magic"),
        (raw(b"\x35"), "no length"),
        (raw(b"\x35\x05\x01"), "claims 5"),
        (raw(b"\x35\x02\x01\x01\xff"), "option 53"),
        (raw(b"\x35\x01\x00\xff"), "message type 0"),
        (raw(b"\x35\x01\x13\xff"), "message type 19"),
        (raw(b"\x32\x03\x0a\x00\x00\xff"), "option 50"),
        (raw(b"\x36\x05\x0a\x00\x00\x01\x02\xff"), "option 54"),
        (raw(b"\x39\x02\x01\x00\xff"), "576"),
        (raw(b"\x5d\x03\x00\x07\x00\xff"), "option 93"),
        (raw(b"\x5d\x00\xff"), "option 93"),
        (raw(b"\x5e\x02\x01\x02\xff"), "option 94"),
        (raw(b"\x61\x10" + bytes(16) + b"\xff"), "option 97"),
        (raw(b"\x3d\x01\x01\xff"), "option 61"),
        (raw(b"\x03\x05\x01\x02\x03\x04\x05\xff"), "option 3"),
        (raw(b"\x34\x01\x04\xff"), "option 52"),
        (raw(b"\x34\x02\x01\x01\xff"), "option 52"),
        (raw(b"\x34\x01\x01\xff"), "file: no end"),  # overloaded file field with no END
    ],
)
def test_malformed_raises_typed_error(data, why):
    with pytest.raises(DhcpDecodeError, match=why):
        decode(data)


def test_sname_and_file_are_nul_terminated_strings():
    data = bytearray(raw(b"\x35\x01\x01\xff"))
    data[44:50] = b"srv\0xx"
    data[108:121] = b"boot.efi\0junk"
    p = decode(bytes(data))
    assert (p.sname, p.file, p.boot_file) == (b"srv", b"boot.efi", "boot.efi")


def test_option_67_wins_over_file_field():
    data = bytearray(raw(b"\x43\x05a.efi\xff"))
    data[108:113] = b"b.efi"
    assert decode(bytes(data)).boot_file == "a.efi"


@pytest.mark.parametrize(
    "v, expected",
    [(b"iPXE", ["iPXE"]), (b"\x04iPXE", ["iPXE"]), (b"\x02ab\x01c", ["ab", "c"]), (b"\x09ab", ["\tab"])],
)
def test_user_class_forms(v, expected):
    assert parse_user_class(v) == expected


@pytest.mark.parametrize(
    "subs, end",
    [({6: b"\x08"}, True), ({176: b"\x01", 1: b"\x7f"}, False), ({1: b"circuit", 2: b"remote-id"}, False)],
)
def test_encapsulated_43_82_175_round_trip(subs, end):
    blob = encode_suboptions(subs, end=end)
    assert decode_suboptions(blob) == subs
    assert blob.endswith(b"\xff") == end


def test_encapsulated_rejects_overrun_and_oversize():
    with pytest.raises(DhcpDecodeError):
        decode_suboptions(b"\x01\x05ab")
    with pytest.raises(DhcpEncodeError):
        encode_suboptions({1: bytes(256)})


def test_encode_pads_to_bootp_minimum_and_puts_message_type_first():
    data = encode(DhcpPacket(options={Opt.CLIENT_ARCH: b"\x00\x07", Opt.MESSAGE_TYPE: b"\x02"}))
    assert len(data) == 300
    assert data[240:243] == b"\x35\x01\x02"


def test_encode_refuses_overlong_fixed_fields():
    with pytest.raises(DhcpEncodeError):
        encode(DhcpPacket(file=b"x" * 128))


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.hex")), ids=lambda p: p.stem)
def test_golden_packets_decode_and_round_trip(path):
    """Every packet captured from udhcpc/dhclient (and our replies to them) decodes, and
    re-encoding what we decoded yields the same message."""
    data = bytes.fromhex(path.read_text())
    p = decode(data)
    assert p.mac is not None and p.msg_type is not None
    again = decode(encode(p, 1500))
    assert again == p
    if "-in-" in path.name:
        assert struct.unpack("!H", p.options[Opt.CLIENT_ARCH])[0] in (0, 7, 16)
