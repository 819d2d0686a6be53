"""A lease that cannot be made durable withholds its ACK (issue 13): the real DHCP shell, a real udhcpc,
the wire captured.

Alone on SQLite, the server makes a lease durable by appending it to the lease
journal (`inventory/lease_journal.py`); the leases table catches up later. So
two failures are tried, each against a real client:

- the journal's file system is full (the data directory is a small tmpfs,
  filled up): no DHCPACK may leave; the capture on the client's interface shows
  OFFERs (they commit nothing) and no ACK. Once space is freed, the next try is
  ACKed and the lease reaches the table.
- the leases table is locked by another connection (`BEGIN EXCLUSIVE`): the
  journal still works, so the client is ACKed, and the table holds its lease
  once the lock is gone (the catch-up retries).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from dhcp_netns import NetnsPair, need, udhcpc, udp_payloads
from ramboot.proto.dhcp_codec import decode

MAC = "02:00:00:c0:ff:ee"


def _server_types(pcap: Path) -> list[int]:
    """DHCP message types the server sent (UDP from port 67), in order."""
    return [decode(p).msg_type for sport, _, p in udp_payloads(pcap.read_bytes()) if sport == 67]


def _capture(pair: NetnsPair, path: Path) -> subprocess.Popen:
    p = pair.popen(pair.cli_ns, "tcpdump", "--immediate-mode", "-i", pair.cli_if, "-U", "-n", "-w", str(path), "udp port 67 or udp port 68",
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.stderr is not None
    p.stderr.readline()  # "listening on ...": the capture is running
    return p


def _fill(directory: Path) -> Path:
    """Fill the file system holding `directory` until a write fails with ENOSPC."""
    fill = directory / "fill"
    fd = os.open(fill, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)
    return fill


def _udhcpc_fails(pair: NetnsPair, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "never.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    # udhcpc: 3 DISCOVERs, 3 s apart; each OFFER is answered with a REQUEST that cannot be made durable
    return pair.run(pair.cli_ns, "busybox", "udhcpc", "-i", pair.cli_if, "-f", "-q", "-n", "-t", "3", "-T", "3",
                    "-s", str(script), timeout=60, check=False)


def _table(db: Path) -> list[tuple]:
    return sqlite3.connect(db).execute("select ip from leases where mac = ?", (MAC,)).fetchall()


def _wait_table(db: Path, want: list[tuple], seconds: float = 10.0) -> list[tuple]:
    deadline = time.monotonic() + seconds
    while (rows := _table(db)) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return rows


@pytest.mark.netns
def test_no_ack_leaves_while_the_lease_journal_cannot_be_written(tmp_path: Path) -> None:
    need("tcpdump", "busybox")
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(data)], check=True)
    pair = NetnsPair()
    try:
        pair.run(pair.cli_ns, "ip", "link", "set", pair.cli_if, "address", MAC)
        server = pair.start_server(tmp_path)
        db = data / "ramboot.db"
        fill = _fill(data)
        pcap = tmp_path / "full.pcap"
        cap = _capture(pair, pcap)
        res = _udhcpc_fails(pair, tmp_path)
        time.sleep(1.0)
        pair.stop(cap)
        assert res.returncode != 0, f"udhcpc got a lease while its journal line failed: {res.stdout}{res.stderr}"
        sent = _server_types(pcap)
        assert 2 in sent and 5 not in sent, sent  # OFFERs went out (they commit nothing), no ACK
        log = (tmp_path / "server.log").read_text()
        assert "lease commit failed" in log and "replies withheld" in log, log[-2000:]
        assert "No space left" in log, log[-2000:]

        fill.unlink()
        pcap2 = tmp_path / "freed.pcap"
        cap = _capture(pair, pcap2)
        lease = udhcpc(pair, tmp_path)
        time.sleep(1.0)  # the capture writes what it has seen
        pair.stop(cap)
        assert 5 in _server_types(pcap2)  # the ACK, now that the journal can be written
        assert _wait_table(db, [(lease["ip"],)]) == [(lease["ip"],)]
        assert server.poll() is None  # still serving
        pair.stop(server)
    finally:
        pair.close()
        subprocess.run(["umount", "-l", str(data)], check=False)


@pytest.mark.netns
def test_a_locked_leases_table_costs_no_ack_and_catches_up(tmp_path: Path) -> None:
    need("tcpdump", "busybox")
    pair = NetnsPair()
    try:
        pair.run(pair.cli_ns, "ip", "link", "set", pair.cli_if, "address", MAC)
        server = pair.start_server(tmp_path)
        db = tmp_path / "data" / "ramboot.db"
        lock = sqlite3.connect(db, timeout=1, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the write lock: every catch-up of the table fails
        pcap = tmp_path / "locked.pcap"
        cap = _capture(pair, pcap)
        lease = udhcpc(pair, tmp_path)
        time.sleep(7)  # a catch-up waits out SQLite's 5 s busy timeout, and fails
        pair.stop(cap)
        assert 5 in _server_types(pcap)  # the lease is durable in the journal: ACKed
        log = (tmp_path / "server.log").read_text()
        assert "could not catch up" in log, log[-2000:]
        lock.execute("ROLLBACK")
        lock.close()
        assert _wait_table(db, [(lease["ip"],)]) == [(lease["ip"],)]
        assert server.poll() is None  # still serving
    finally:
        pair.close()
