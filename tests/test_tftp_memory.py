"""TFTP memory and amplification bounds, on the sans-IO machine (issue 13).

The defect: an RRQ asking blksize 65465 and windowsize 65536 was clamped to
65464 x 64 and the transfer allocated its 4.2 MB ring before the client had
acknowledged anything; 16 transfers per source x 32 sources reached 2.2 GB.
Now the ring follows what the client has proven (see tftp_core's notes).
"""

from __future__ import annotations

import os

from ramboot.proto import tftp_core as tftp
from tftp_sim import rrq, run

HOSTILE = {"blksize": 65465, "windowsize": 65536, "tsize": 0}
SEG = 4 + 65464


def test_hostile_options_hold_nothing_before_the_oack_is_acknowledged():
    m = tftp.ReadTransfer(rrq(**HOSTILE), tftp.BytesSource(os.urandom(10**6)), runs=True)
    assert (m.neg.blksize, m.neg.windowsize) == (65464, 64)  # clamped, as before
    out = m.start(0.0)
    assert m.ring_bytes == 0 and [tftp.parse(bytes(p)) for p in out] == [
        tftp.OAck({"blksize": "65464", "windowsize": "64", "tsize": "1000000"})]
    # the ACK of the OACK buys one block of window (two slots with the read-ahead), not 64
    out = m.on_packet(tftp.Ack(0).encode(), 0.1)
    assert m.window == 1 and m.ring_bytes == 2 * SEG
    assert sum(len(p) for p in out) == SEG


def test_the_window_and_ring_grow_with_what_is_acknowledged():
    data = os.urandom(65464 * 300 + 7)
    m = tftp.ReadTransfer(rrq(**HOSTILE), tftp.BytesSource(data), runs=True)
    windows, rings = [], []

    class Watched:  # the transfer, seen after each packet (a wrapper: a compiled class's methods are fixed)
        def __getattr__(self, name):
            return getattr(m, name)

        def on_packet(self, pkt, now):
            out = m.on_packet(pkt, now)
            windows.append(m.window)
            rings.append(m.ring_bytes)
            return out

    r = run(Watched(), read_ahead=True)
    assert r.outcome == "ok" and r.data == data
    seen = sorted(set(windows[:-1]))
    assert seen == [1, 2, 4, 8, 16, 32, 64]  # doubled per whole window acknowledged
    assert max(rings) == 64 * SEG  # one window at most (two would pass 1 MiB)
    assert m.ring_bytes == 0  # given back at the end


def test_lock_step_and_small_windows_keep_their_read_ahead_ring():
    m = tftp.ReadTransfer(rrq(blksize=1468), tftp.BytesSource(os.urandom(10**6)), runs=True)
    m.start(0.0)
    m.on_packet(tftp.Ack(0).encode(), 0.0)
    assert m.window == 1 and m.ring_bytes == 11 * 1472  # 16 KiB of read-ahead, as before
    m = tftp.ReadTransfer(rrq(blksize=1456, windowsize=16), tftp.BytesSource(os.urandom(10**6)))
    m.start(0.0)
    m.on_packet(tftp.Ack(0).encode(), 0.0)
    assert m.window == 16  # under 64 KiB: the whole asked window at once
    # atftp's 64 x 1,468 (94 KB): whole too, or atftp waits out its timeout for the blocks held back
    m = tftp.ReadTransfer(rrq(blksize=1468, windowsize=64), tftp.BytesSource(os.urandom(10**6)))
    m.start(0.0)
    out = m.on_packet(tftp.Ack(0).encode(), 0.0)
    assert m.window == 64 and len(out) == 64


def test_spoofed_requests_from_many_sources_hold_nothing():
    """The 2.2 GB case: 16 transfers per source x 32 sources, none ever ACKed."""
    budget = tftp.MemoryBudget(256 << 20)
    machines = [tftp.ReadTransfer(rrq(**HOSTILE), tftp.BytesSource(b"x" * 10**6), runs=True, budget=budget)
                for _ in range(16 * 32)]
    for m in machines:
        m.start(0.0)
    assert budget.used == 0 and sum(m.ring_bytes for m in machines) == 0
    # if each ACKs its OACK, each holds two 64 KiB slots: 512 x 131 KB = 67 MB, not 2.2 GB
    for m in machines:
        m.on_packet(tftp.Ack(0).encode(), 0.1)
    assert budget.used == 512 * 2 * SEG < 70e6
    for m in machines:
        m.close()
    assert budget.used == 0


def test_the_budget_is_a_ceiling():
    budget = tftp.MemoryBudget(8 << 20)
    data = os.urandom(65464 * 200)
    machines = [tftp.ReadTransfer(rrq(**HOSTILE), tftp.BytesSource(data), runs=True, budget=budget)
                for _ in range(100)]
    for m in machines:
        m.start(0.0)
        m.on_packet(tftp.Ack(0).encode(), 0.1)
    # the first 64 got their 131 KB ring; the others' ACKs were ignored (starved), as if lost
    assert budget.used <= 8 << 20
    assert sum(m.confirmed for m in machines) == (8 << 20) // (2 * SEG)
    assert sum(m.starved for m in machines) == 100 - (8 << 20) // (2 * SEG)
    # a confirmed transfer still completes when its window cannot grow
    m = machines[0]
    r = run(m, read_ahead=True)
    assert r.outcome == "ok" and r.data == data and budget.peak <= 8 << 20
    for m in machines:
        m.close()
    assert budget.used == 0


def _spoofed(request: tftp.Request, size: int) -> tuple[int, int]:
    """Bytes in (the RRQ) and bytes out (all the machine ever sends) for a client that never answers."""
    m = tftp.ReadTransfer(request, tftp.BytesSource(b"x" * size), runs=True)
    out = m.start(0.0)
    while not m.done:
        out += m.on_timer(m.deadline)
    return len(request.encode()), sum(len(p) for p in out)


def test_bytes_out_per_byte_in_for_spoofed_requests_is_bounded():
    """What a spoofed RRQ makes the server send to its victim (UDP payload bytes; docs/benchmarks.md)."""
    cases = {
        "no options": rrq("undionly.kpxe"),
        "tsize": rrq("undionly.kpxe", tsize=0),
        "hostile options": rrq("undionly.kpxe", **HOSTILE),
        "huge tsize and timeout": rrq("x", tsize="9" * 10, timeout=255, blksize=65464),
    }
    ratios = {}
    for name, req in cases.items():
        bytes_in, bytes_out = _spoofed(req, 10**6)
        ratios[name] = bytes_out / bytes_in
    print({k: round(v, 2) for k, v in ratios.items()})
    # one DATA 1 (516 bytes) to a 22-byte RRQ, never resent; an OACK (no longer than the options
    # it answers, plus tsize digits) at most 3 times
    assert ratios["no options"] == 516 / 22
    assert all(ratios[k] <= 4.0 for k in ("tsize", "hostile options", "huge tsize and timeout")), ratios
