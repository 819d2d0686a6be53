"""RFC 3396 long options and RFC 2131 option overload (52): split on encode, joined on decode."""

from __future__ import annotations

import pytest

from ramboot.proto.dhcp_codec import MAGIC, DhcpEncodeError, DhcpPacket, Opt, decode, encode


def header(sname: bytes = b"", file: bytes = b"") -> bytearray:
    h = bytearray(236)
    h[0], h[1], h[2] = 1, 1, 6
    h[44 : 44 + len(sname)] = sname
    h[108 : 108 + len(file)] = file
    return h


@pytest.mark.parametrize(
    "options, file, sname, expected",
    [
        # a repeated option is one value, in order (RFC 3396 §7)
        (b"\x35\x01\x01\x0c\x03abc\x0c\x02de\xff", b"", b"", {53: b"\x01", 12: b"abcde"}),
        # overload 1: options continue in `file`
        (b"\x34\x01\x01\x35\x01\x01\x0c\x02ab\xff", b"\x0c\x02cd\xff", b"", {53: b"\x01", 12: b"abcd"}),
        # overload 2: in `sname`
        (b"\x34\x01\x02\x35\x01\x01\xff", b"", b"\x3c\x03xyz\xff", {53: b"\x01", 60: b"xyz"}),
        # overload 3: options, then file, then sname: one option split across all three
        (b"\x34\x01\x03\x35\x01\x01\x2b\x01A\xff", b"\x2b\x01B\xff", b"\x2b\x01C\xff", {53: b"\x01", 43: b"ABC"}),
    ],
)
def test_decode_concatenates_across_fields(options, file, sname, expected):
    p = decode(bytes(header(sname, file)) + MAGIC + options)
    assert p.options == expected
    assert Opt.OVERLOAD not in p.options  # framing, not content
    assert p.file == b"" and p.sname == b""  # overloaded fields are not names


def test_no_overload_keeps_file_and_sname_as_names():
    p = decode(bytes(header(b"srv", b"\x0c\x02ab\xff")) + MAGIC + b"\x35\x01\x01\xff")
    assert p.file == b"\x0c\x02ab\xff" and 12 not in p.options


@pytest.mark.parametrize("size", [256, 300, 510, 600, 1000])
def test_long_option_is_split_in_255_byte_pieces(size):
    value = bytes(i % 251 for i in range(size))
    data = encode(DhcpPacket(options={Opt.MESSAGE_TYPE: b"\x02", Opt.VENDOR_SPECIFIC: value}), 1500)
    # the wire holds several option-43 instances, none over 255 bytes
    i, pieces = 240, []
    while data[i] != 255:
        code, n = data[i], data[i + 1]
        if code == 43:
            pieces.append(n)
        i += 2 + n
    assert len(pieces) == -(-size // 255) and max(pieces) <= 255
    assert decode(data).options[Opt.VENDOR_SPECIFIC] == value


@pytest.mark.parametrize(
    "size, overload",
    [(250, None), (300, 1), (400, 1), (450, 3)],
)
def test_overload_used_only_when_the_options_field_is_full(size, overload):
    pkt = DhcpPacket(options={Opt.MESSAGE_TYPE: b"\x02", Opt.VENDOR_SPECIFIC: b"v" * size, Opt.HOSTNAME: b"node-1"})
    data = encode(pkt)  # default: 576-octet datagram
    assert len(data) <= 576 - 28
    raw_overload = data[242] if data[240] == Opt.OVERLOAD else None
    assert raw_overload == overload
    assert decode(data).options == pkt.options


def test_small_options_are_never_split_across_fields():
    """Clients without RFC 3396 must still read every option of up to 255 bytes whole."""
    opts = {Opt.MESSAGE_TYPE: b"\x02", **{200 + i: bytes([i]) * 60 for i in range(7)}}
    data = encode(DhcpPacket(options=opts))
    seen: dict[int, int] = {}
    for field in (data[240:], data[108:236], data[44:108]):
        i = 0
        while i < len(field) and field[i] != 255:
            if field[i] == 0:
                i += 1
                continue
            seen[field[i]] = seen.get(field[i], 0) + 1
            i += 2 + field[i + 1]
    assert all(n == 1 for c, n in seen.items() if c != Opt.OVERLOAD)
    assert decode(data).options == opts


def test_used_file_field_is_not_overloaded():
    pkt = DhcpPacket(file=b"boot.efi", options={Opt.MESSAGE_TYPE: b"\x02", Opt.VENDOR_SPECIFIC: b"v" * 330})
    p = decode(encode(pkt))
    assert p.file == b"boot.efi" and p.options == pkt.options


def test_too_much_for_the_client_is_a_typed_error():
    with pytest.raises(DhcpEncodeError):
        encode(DhcpPacket(options={Opt.VENDOR_SPECIFIC: b"v" * 600}))
    # the same fits a client that announced 1500 octets (option 57)
    assert len(encode(DhcpPacket(options={Opt.VENDOR_SPECIFIC: b"v" * 600}), 1500)) > 576
