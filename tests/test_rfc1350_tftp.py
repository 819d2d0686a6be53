"""RFC 1350 codec and lock-step read transfers, against the sans-IO machine (time passed in)."""

from __future__ import annotations

import os
import struct

import pytest

from ramboot.proto import tftp_core as tftp
from ramboot.server.tftp_server import FileSource
from tftp_sim import rrq, run

# ------------------------------------------------------------------ codec

@pytest.mark.parametrize("raw, expected", [
    (b"\x00\x01boot.bin\x00octet\x00", tftp.Request(tftp.RRQ, "boot.bin", "octet", {})),
    (b"\x00\x01a/b\x00NetASCII\x00", tftp.Request(tftp.RRQ, "a/b", "netascii", {})),
    (b"\x00\x02up\x00octet\x00", tftp.Request(tftp.WRQ, "up", "octet", {})),
    # PXE ROMs may pad requests with NULs
    (b"\x00\x01f\x00octet\x00\x00\x00\x00", tftp.Request(tftp.RRQ, "f", "octet", {})),
    (b"\x00\x01f\x00octet\x00BLKSIZE\x001468\x00tsize\x000\x00",
     tftp.Request(tftp.RRQ, "f", "octet", {"blksize": "1468", "tsize": "0"})),
    # first of a repeated option wins
    (b"\x00\x01f\x00octet\x00blksize\x00512\x00blksize\x009000\x00",
     tftp.Request(tftp.RRQ, "f", "octet", {"blksize": "512"})),
    (b"\x00\x03\x00\x07hello", tftp.Data(7, b"hello")),
    (b"\x00\x03\xff\xff", tftp.Data(65535, b"")),
    (b"\x00\x04\x00\x00", tftp.Ack(0)),
    (b"\x00\x04\x12\x34", tftp.Ack(0x1234)),
    (b"\x00\x05\x00\x01nope\x00", tftp.Error(1, "nope")),
    (b"\x00\x05\x00\x08", tftp.Error(8, "")),  # missing message: tolerated
    (b"\x00\x06blksize\x001468\x00", tftp.OAck({"blksize": "1468"})),
])
def test_parse(raw, expected):
    assert tftp.parse(raw) == expected


@pytest.mark.parametrize("raw", [
    b"", b"\x00", b"\x00\x00", b"\x00\x07abc", b"\xff\xff\x00\x00",
    b"\x00\x01", b"\x00\x01file", b"\x00\x01file\x00octet",  # unterminated
    b"\x00\x01\x00octet\x00", b"\x00\x01file\x00\x00",  # empty filename / mode
    b"\x00\x01file\x00", b"\x00\x01f\x00octet\x00blksize\x00",  # option without value
    b"\x00\x01f\x00octet\x00\xffx\x001\x00",  # non-ASCII option
    b"\x00\x01\xff\xfe\x00octet\x00",  # undecodable filename
    b"\x00\x03\x00", b"\x00\x04\x00", b"\x00\x05\x00",
])
def test_malformed_is_a_typed_error(raw):
    with pytest.raises(tftp.MalformedPacket):
        tftp.parse(raw)


@pytest.mark.parametrize("pkt", [
    tftp.Request(tftp.RRQ, "images/demo/vmlinuz", "octet", {"blksize": "1468", "windowsize": "16"}),
    tftp.Data(1, b"x" * 512), tftp.Ack(65535), tftp.Error(5, "unknown transfer ID"),
    tftp.OAck({"tsize": "123", "blksize": "1024"}),
])
def test_round_trip(pkt):
    assert tftp.parse(pkt.encode()) == pkt


def test_error_encoding_is_nul_terminated_ascii():
    assert tftp.error_packet(tftp.ErrorCode.FILE_NOT_FOUND, "no\0such") == b"\x00\x05\x00\x01no?such\x00"


# ------------------------------------------------------- lock-step transfer

@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1024, 5000])
def test_lockstep_sizes(size):
    """A multiple of 512 ends with an empty DATA block (RFC 1350 section 6)."""
    data = os.urandom(size)
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(data))
    r = run(m)
    assert r.outcome == "ok" and r.data == data and r.oack is None
    assert len(r.blocks_on_wire) == size // 512 + 1
    assert m.bytes_sent == size and m.retransmits == 0


def test_first_packet_is_data_1_without_options():
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(b"abc"))
    assert [bytes(p) for p in m.start(0.0)] == [b"\x00\x03\x00\x01abc"]


@pytest.mark.parametrize("windowsize", [1, 16])
def test_file_source_reads_through_pread(tmp_path, windowsize):
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    src = FileSource(os.open(tmp_path / "f", os.O_RDONLY))
    try:
        assert run(tftp.ReadTransfer(rrq(windowsize=windowsize), src)).data == data
    finally:
        src.close()


@pytest.mark.parametrize("name, drop", [
    ("every 7th lost", lambda i, p: i % 7 == 3),
    ("final block lost twice", lambda i, p: p[:4] == b"\x00\x03\x00\x0b" and i < 14),
])
def test_loss_is_recovered_by_the_timer(name, drop):
    data = os.urandom(512 * 10 + 100)
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(data))
    r = run(m, drop=drop)
    assert r.outcome == "ok" and r.data == data
    assert m.retransmits > 0


def test_first_data_is_not_resent_to_an_address_that_never_answered():
    """Amplification guard without options: one DATA 1, never resent before an ACK (the
    RFC 1350 client resends its RRQ or its ACK), silence, and an end after the unconfirmed timeouts."""
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(os.urandom(512 * 10)))
    out = [bytes(p) for p in m.start(0.0)]
    assert [p[:4] for p in out] == [b"\x00\x03\x00\x01"] and m.ring_bytes == 516
    while not m.done:
        out += [bytes(p) for p in m.on_timer(m.deadline)]
    assert len(out) == 1 and m.outcome == "timeout" and m.ring_bytes == 0
    # the same transfer, its first ACK late but in time: it goes on with a read-ahead ring
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(os.urandom(512 * 10)))
    m.start(0.0)
    assert m.on_timer(m.deadline) == []
    assert [bytes(p)[:4] for p in m.on_packet(tftp.Ack(1).encode(), 1.5)] == [b"\x00\x03\x00\x02"]
    assert m.ring_bytes > 516


def test_duplicate_acks_are_never_answered():
    """Sorcerer's Apprentice: with every ACK doubled, each block still goes out once."""
    data = os.urandom(512 * 40)
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(data))
    r = run(m, dup_acks=True)
    assert r.data == data and m.retransmits == 0
    assert len(r.blocks_on_wire) == 41


def test_stale_and_future_acks_are_ignored():
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(os.urandom(5000)))
    m.start(0.0)
    assert m.on_packet(tftp.Ack(0).encode(), 0.1) == []  # duplicate of nothing
    assert m.on_packet(tftp.Ack(9).encode(), 0.1) == []  # not sent yet
    assert m.on_packet(tftp.Ack(60000).encode(), 0.1) == []
    out = m.on_packet(tftp.Ack(1).encode(), 0.1)
    assert [bytes(p)[:4] for p in out] == [b"\x00\x03\x00\x02"]


def test_timeouts_back_off_then_give_up():
    limits = tftp.Limits(timeout=1.0, max_timeout=4.0, max_retries=4)
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(b"x" * 2000), limits)
    m.start(0.0)
    m.on_packet(tftp.Ack(1).encode(), 0.0)  # confirmed: from now on the timer resends
    assert m.deadline == 1.0
    assert m.on_timer(0.5) == []  # not yet due
    gaps, resent, now = [], [], 0.0
    while True:
        now = m.deadline
        out = m.on_timer(now)
        if m.done:
            break
        resent.append([bytes(p)[:4] for p in out])
        gaps.append(m.deadline - now)
    assert gaps == [2.0, 4.0, 4.0, 4.0]  # doubling, capped
    assert all(r == [b"\x00\x03\x00\x02"] for r in resent)
    assert m.outcome == "timeout"
    assert tftp.parse(bytes(out[0])) == tftp.Error(0, "timed out")
    assert m.on_timer(now + 100) == [] and m.on_packet(tftp.Ack(1).encode(), now) == []


def test_progress_resets_the_retry_budget():
    limits = tftp.Limits(max_retries=2)
    data = os.urandom(512 * 6)
    # every block after the first is lost twice before it gets through: 2 retries each, never 3
    # (DATA 1 is never resent before the client's first ACK: see the amplification guard)
    seen: dict[bytes, int] = {b"\x00\x03\x00\x01": 2}

    def drop(i, p):
        seen[p[:4]] = seen.get(p[:4], 0) + 1
        return seen[p[:4]] <= 2

    r = run(tftp.ReadTransfer(rrq(), tftp.BytesSource(data), limits), drop=drop)
    assert r.outcome == "ok" and r.data == data


def test_client_error_aborts():
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(b"x" * 5000))
    m.start(0.0)
    assert m.on_packet(tftp.Error(0, "disk full").encode(), 0.1) == []
    assert m.outcome == "aborted" and m.deadline is None


def test_junk_from_the_peer_is_ignored():
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(b"x" * 5000))
    m.start(0.0)
    for junk in (b"", b"\x00", b"\x00\x09zz", tftp.Data(1, b"q").encode(), tftp.Request(tftp.RRQ, "a", "octet").encode()):
        assert m.on_packet(junk, 0.1) == []
    assert not m.done


def test_rollover_past_65535_blocks():
    """With blksize 8, 600 kB is > 65535 blocks: numbers wrap to 0 and the data stays exact."""
    data = os.urandom(8 * 70_000 + 3)
    m = tftp.ReadTransfer(rrq(blksize=8), tftp.BytesSource(data))
    r = run(m)
    assert r.outcome == "ok" and r.data == data
    assert r.blocks_on_wire[65534:65537] == [65535, 0, 1]
    assert m.sent == 70_001


def test_netascii_translation():
    text = b"line1\nline2\r\nbare\rend"
    expect = b"line1\r\nline2\r\0\r\nbare\r\0end"
    m = tftp.ReadTransfer(rrq(mode="netascii"), tftp.NetasciiSource.from_bytes(text))
    assert m.source.size == len(expect)
    assert run(m).data == expect


def test_netascii_streams_a_file(tmp_path):
    raw = (b"abc\n" * 50_000) + b"\r"
    (tmp_path / "t").write_bytes(raw)
    fd = os.open(tmp_path / "t", os.O_RDONLY)
    src = tftp.NetasciiSource(lambda n: os.read(fd, n), lambda: os.close(fd))
    m = tftp.ReadTransfer(rrq(mode="netascii", blksize=1000), src)
    r = run(m)
    src.close()
    assert r.data == tftp.to_netascii(raw)
    assert "tsize" not in (r.oack or {})  # unknown for a streamed netascii file


def test_data_header_layout():
    m = tftp.ReadTransfer(rrq(), tftp.BytesSource(b"\x01\x02"))
    (pkt,) = m.start(0.0)
    assert struct.unpack("!HH", bytes(pkt)[:4]) == (tftp.DATA, 1)
