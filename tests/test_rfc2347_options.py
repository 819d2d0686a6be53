"""RFC 2347 OACK, RFC 2348 blksize, RFC 2349 timeout and tsize: negotiation and clamping."""

from __future__ import annotations

import os

import pytest

from ramboot.proto import tftp_core as tftp
from tftp_sim import rrq, run

LIMITS = tftp.Limits(max_blksize=1468, max_windowsize=32)


@pytest.mark.parametrize("options, size, blksize, windowsize, timeout, oack", [
    ({}, 100, 512, 1, 1.0, {}),
    ({"blksize": "1024"}, 100, 1024, 1, 1.0, {"blksize": "1024"}),
    ({"blksize": "65464"}, 100, 1468, 1, 1.0, {"blksize": "1468"}),  # clamped to config
    ({"blksize": "99999"}, 100, 1468, 1, 1.0, {"blksize": "1468"}),
    ({"blksize": "8"}, 100, 8, 1, 1.0, {"blksize": "8"}),
    ({"blksize": "7"}, 100, 512, 1, 1.0, {}),  # below RFC 2348 minimum: ignored
    ({"blksize": "abc"}, 100, 512, 1, 1.0, {}),
    ({"blksize": "-5"}, 100, 512, 1, 1.0, {}),
    ({"windowsize": "16"}, 100, 512, 16, 1.0, {"windowsize": "16"}),
    ({"windowsize": "64"}, 100, 512, 32, 1.0, {"windowsize": "32"}),  # clamped
    ({"windowsize": "0"}, 100, 512, 1, 1.0, {}),
    ({"timeout": "3"}, 100, 512, 1, 3.0, {"timeout": "3"}),
    ({"timeout": "0"}, 100, 512, 1, 1.0, {}),  # RFC 2349: 1..255, else not acknowledged
    ({"timeout": "256"}, 100, 512, 1, 1.0, {}),
    ({"tsize": "0"}, 12345, 512, 1, 1.0, {"tsize": "12345"}),
    ({"tsize": "999"}, 7, 512, 1, 1.0, {"tsize": "7"}),
    ({"tsize": "0"}, None, 512, 1, 1.0, {}),  # size unknown: not acknowledged
    ({"multicast": "", "rollover": "0"}, 100, 512, 1, 1.0, {}),  # unknown options: ignored
    ({"blksize": "1468", "windowsize": "16", "tsize": "0", "timeout": "2"}, 5, 1468, 16, 2.0,
     {"blksize": "1468", "windowsize": "16", "tsize": "5", "timeout": "2"}),
])
def test_negotiate(options, size, blksize, windowsize, timeout, oack):
    n = tftp.negotiate(options, LIMITS, size)
    assert (n.blksize, n.windowsize, n.timeout, n.oack) == (blksize, windowsize, timeout, oack)


def test_oack_first_then_data_after_ack_0():
    data = os.urandom(3000)
    m = tftp.ReadTransfer(rrq(blksize=1024, tsize=0), tftp.BytesSource(data), LIMITS)
    (first,) = m.start(0.0)
    assert tftp.parse(bytes(first)) == tftp.OAck({"blksize": "1024", "tsize": "3000"})
    assert m.on_packet(tftp.Ack(1).encode(), 0.1) == []  # only ACK 0 answers an OACK
    out = m.on_packet(tftp.Ack(0).encode(), 0.1)
    assert [tftp.parse(bytes(p)) for p in out] == [tftp.Data(1, data[:1024])]
    r = run(tftp.ReadTransfer(rrq(blksize=1024, tsize=0), tftp.BytesSource(data), LIMITS))
    assert r.data == data and r.oack == {"blksize": "1024", "tsize": "3000"}
    assert len(r.blocks_on_wire) == 3


def test_oack_is_retransmitted_and_given_up():
    m = tftp.ReadTransfer(rrq(blksize=1024), tftp.BytesSource(b"x"), tftp.Limits(max_retries=2))
    m.start(0.0)
    out1 = m.on_timer(m.deadline)
    out2 = m.on_timer(m.deadline)
    assert [tftp.parse(bytes(p)) for p in out1 + out2] == [tftp.OAck({"blksize": "1024"})] * 2
    m.on_timer(m.deadline)
    assert m.outcome == "timeout" and m.retransmits == 2 and m.bytes_sent == 0


def test_spoofed_rrq_gets_no_data_before_the_client_answers():
    """Amplification guard: with options, only the small OACK precedes an ACK from the client."""
    m = tftp.ReadTransfer(rrq(blksize=65464, windowsize=64), tftp.BytesSource(os.urandom(10**6)))
    out = m.start(0.0)
    while not m.done:
        out += m.on_timer(m.deadline)
    assert all(len(bytes(p)) < 64 for p in out) and m.bytes_sent == 0


def test_option_refused_by_client_aborts():
    m = tftp.ReadTransfer(rrq(blksize=1024), tftp.BytesSource(b"x" * 5000), LIMITS)
    m.start(0.0)
    m.on_packet(tftp.Error(tftp.ErrorCode.OPTION_REFUSED, "no").encode(), 0.1)
    assert m.outcome == "aborted"


def test_client_timeout_option_sets_the_retransmit_interval():
    m = tftp.ReadTransfer(rrq(timeout=5), tftp.BytesSource(b"x"), tftp.Limits(max_timeout=8.0))
    m.start(10.0)
    assert m.deadline == 15.0
    m.on_timer(15.0)
    assert m.deadline == 23.0  # doubled, capped at max_timeout


@pytest.mark.parametrize("blksize", [8, 512, 1428, 1468, 8192, 65464])
def test_blksize_transfers(blksize):
    data = os.urandom(blksize * 3 + blksize // 2)
    m = tftp.ReadTransfer(rrq(blksize=blksize), tftp.BytesSource(data))
    r = run(m)
    assert r.data == data and len(r.blocks_on_wire) == 4
    assert all(len(p) <= blksize + 4 for p in r.sent)
