"""RFC 7440 windowsize: bursts, in-window ACKs, loss, duplicates and rollover."""

from __future__ import annotations

import os

import pytest

from ramboot.proto import tftp_core as tftp
from tftp_sim import rrq, run


def _blocks(out):
    return [tftp.parse(bytes(p)).block for p in out]


def test_window_is_sent_as_one_burst():
    data = os.urandom(512 * 10)
    m = tftp.ReadTransfer(rrq(windowsize=4), tftp.BytesSource(data))
    m.start(0.0)
    assert _blocks(m.on_packet(tftp.Ack(0).encode(), 0.0)) == [1, 2, 3, 4]
    assert _blocks(m.on_packet(tftp.Ack(4).encode(), 0.0)) == [5, 6, 7, 8]
    # the client saw a gap after 6: the next window starts at 7 (7 and 8 come from the ring)
    assert _blocks(m.on_packet(tftp.Ack(6).encode(), 0.0)) == [7, 8, 9, 10]
    assert m.retransmits == 2
    assert _blocks(m.on_packet(tftp.Ack(10).encode(), 0.0)) == [11]  # the empty last block
    m.on_packet(tftp.Ack(11).encode(), 0.0)
    assert m.outcome == "ok" and m.bytes_sent == len(data)


def test_window_never_passes_the_last_block():
    m = tftp.ReadTransfer(rrq(windowsize=16), tftp.BytesSource(b"y" * 1100))
    m.start(0.0)
    assert _blocks(m.on_packet(tftp.Ack(0).encode(), 0.0)) == [1, 2, 3]


@pytest.mark.parametrize("batched", [False, True], ids=["packets", "runs+read-ahead"])
@pytest.mark.parametrize("windowsize", [1, 2, 8, 16, 64])
@pytest.mark.parametrize("loss", ["none", "every 13th", "first of each window", "whole window once"])
def test_windowed_transfer_with_loss(windowsize, loss, batched):
    data = os.urandom(1024 * 200 + 5)
    drops = {
        "none": lambda i, p: False,
        "every 13th": lambda i, p: i % 13 == 5,
        "first of each window": lambda i, p: i % (windowsize + 1) == 1,
        "whole window once": lambda i, p: 1 <= i <= windowsize,
    }
    m = tftp.ReadTransfer(rrq(blksize=1024, windowsize=windowsize), tftp.BytesSource(data), runs=batched)
    r = run(m, drop=drops[loss], read_ahead=batched)
    assert r.outcome == "ok" and r.data == data
    if loss == "none":
        assert m.retransmits == 0


@pytest.mark.parametrize("windowsize", [4, 16])
def test_duplicate_acks_never_resend_a_window(windowsize):
    data = os.urandom(512 * 200)
    m = tftp.ReadTransfer(rrq(windowsize=windowsize), tftp.BytesSource(data))
    r = run(m, dup_acks=True)
    assert r.data == data and m.retransmits == 0
    assert len(r.blocks_on_wire) == 201  # each block exactly once


def test_each_block_is_read_once():
    reads = []

    class Counting:  # a BytesSource that counts (by wrapping: a compiled class takes no subclasses)
        def __init__(self, data):
            self.inner = tftp.BytesSource(data)
            self.size = self.inner.size

        def readinto(self, bufs, index):
            reads.extend(range(index, index + len(bufs)))
            return self.inner.readinto(bufs, index)

        def close(self):
            self.inner.close()

    data = os.urandom(512 * 100)
    r = run(tftp.ReadTransfer(rrq(windowsize=8), Counting(data)), drop=lambda i, p: i % 5 == 2)
    assert r.data == data
    assert reads == list(range(len(reads)))  # never twice, never backwards
    assert 101 <= len(reads) <= 101 + 8  # the last window may ask past the end once


def test_a_window_is_at_most_two_runs_of_whole_packets():
    """Runs are what one GSO send takes: packets of 4 + blksize, but the file's last, which ends a run."""
    data = os.urandom(512 * 50 + 100)
    m = tftp.ReadTransfer(rrq(windowsize=8), tftp.BytesSource(data), runs=True)
    m.start(0.0)
    acks = [0, 8, 16, 19, 27, 30, 38, 46]  # in-window ACKs shift the window off the ring's slots
    for ack in acks:
        out = m.on_packet(tftp.Ack(ack).encode(), 0.0)
        m.read_ahead()
        assert 1 <= len(out) <= 2 and all(len(r) % m.segment == 0 for r in out[:-1])
        assert b"".join(out) == b"".join(
            tftp.Data(b & 0xFFFF, data[(b - 1) * 512 : b * 512]).encode() for b in range(ack + 1, min(ack + 8, 51) + 1))
    assert len(out[-1]) % m.segment == 104  # the short last block closes the last run


def test_read_ahead_reads_each_block_once_in_batches():
    reads = []

    class Counting:  # a BytesSource that counts (by wrapping: a compiled class takes no subclasses)
        def __init__(self, data):
            self.inner = tftp.BytesSource(data)
            self.size = self.inner.size

        def readinto(self, bufs, index):
            reads.append((index, len(bufs)))
            return self.inner.readinto(bufs, index)

        def close(self):
            self.inner.close()

    data = os.urandom(1468 * 1000)
    r = run(tftp.ReadTransfer(rrq(blksize=1468), Counting(data), runs=True), read_ahead=True)
    assert r.data == data
    blocks = [b for index, n in reads for b in range(index, index + n)]
    assert blocks == list(range(len(blocks))) and len(blocks) <= 1001 + 11  # in order, once (11 slots)
    assert len(reads) <= 1001 // 4  # lock-step, yet each read fills several slots


def test_windowed_rollover():
    """>65535 blocks with windows: wrapped ACK numbers still map to the right blocks."""
    data = os.urandom(8 * 140_000)
    m = tftp.ReadTransfer(rrq(blksize=8, windowsize=64), tftp.BytesSource(data))
    r = run(m, drop=lambda i, p: i % 997 == 500)
    assert r.outcome == "ok" and r.data == data
    assert m.sent == 140_001


def test_ack_beyond_the_window_after_wrap_is_stale():
    m = tftp.ReadTransfer(rrq(blksize=8, windowsize=4), tftp.BytesSource(b"z" * 8 * 100))
    m.start(0.0)
    m.on_packet(tftp.Ack(0).encode(), 0.0)  # 1..4 out
    assert m.on_packet(tftp.Ack(65535).encode(), 0.0) == []  # "block -1": stale
    assert m.on_packet(tftp.Ack(5).encode(), 0.0) == []  # never sent
    assert m.acked == 0
