"""Hypothesis: the codec round-trips, and no byte string crashes the codec or the server core."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhcp_pkt import Rig
from ramboot.proto.dhcp_codec import MAGIC, DhcpDecodeError, DhcpEncodeError, DhcpPacket, Opt, decode, encode

ips = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
# free-form option codes (not ones with a fixed form, nor PAD/END/overload)
free_codes = st.integers(1, 254).filter(lambda c: c not in {1, 3, 6, 12, 50, 51, 52, 53, 54, 55, 57, 58, 59, 60, 61, 77, 93, 94, 97})
packets = st.builds(
    DhcpPacket,
    op=st.sampled_from([1, 2]),
    htype=st.integers(0, 255),
    hlen=st.integers(0, 16),
    hops=st.integers(0, 255),
    xid=st.integers(0, 2**32 - 1),
    secs=st.integers(0, 2**16 - 1),
    flags=st.integers(0, 2**16 - 1),
    ciaddr=ips, yiaddr=ips, siaddr=ips, giaddr=ips,
    chaddr=st.binary(min_size=16, max_size=16),
    sname=st.binary(max_size=63).map(lambda b: b.replace(b"\0", b"x")),
    file=st.binary(max_size=127).map(lambda b: b.replace(b"\0", b"x")),
    options=st.dictionaries(free_codes, st.binary(min_size=0, max_size=600), max_size=6).map(
        lambda d: {Opt.MESSAGE_TYPE: b"\x01", **d}
    ),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(packets, st.sampled_from([None, 576, 1500]))
def test_round_trip(pkt, size):
    try:
        data = encode(pkt, size)
    except DhcpEncodeError:
        return  # more options than the message size allows: refused, never truncated
    assert len(data) <= max(300, (size or 576) - 28)
    assert decode(data) == pkt


@settings(max_examples=500)
@given(st.binary(max_size=700))
def test_random_bytes_decode_or_raise_typed_error(data):
    try:
        decode(data)
    except DhcpDecodeError:
        pass


@settings(max_examples=500)
@given(st.binary(min_size=0, max_size=400))
def test_random_options_after_a_valid_header(tail):
    head = bytearray(236)
    head[0], head[1], head[2] = 1, 1, 6
    try:
        decode(bytes(head) + MAGIC + tail)
    except DhcpDecodeError:
        pass


@pytest.fixture(scope="module")
def rigs(tmp_path_factory):
    full = Rig(tmp_path_factory.mktemp("full"))
    proxy = Rig(tmp_path_factory.mktemp("proxy"), mode="proxy")
    yield full, proxy
    full.close()
    proxy.close()


option_soup = st.dictionaries(
    st.sampled_from([50, 53, 54, 55, 57, 60, 61, 77, 82, 93, 94, 97, 175, 12, 43]),
    st.binary(max_size=40),
    max_size=8,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option_soup, st.sampled_from([67, 4011]), ips, ips)
def test_server_core_never_crashes(rigs, options, port, ciaddr, giaddr):
    """Any well-framed message with hostile option values gets an answer or silence, never an exception."""
    pkt = DhcpPacket(xid=1, chaddr=bytes.fromhex("525400000001") + bytes(10), ciaddr=ciaddr, giaddr=giaddr,
                     options=options)
    data = encode(pkt, 1500)
    for rig in rigs:
        res = rig.server.handle(data, ("10.0.0.9", 68), port, rig.now)
        for s in res.sends:
            decode(s.data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_server_core_survives_random_bytes(rigs, data):
    for rig in rigs:
        rig.server.handle(data, ("10.0.0.9", 68), 67, rig.now)
