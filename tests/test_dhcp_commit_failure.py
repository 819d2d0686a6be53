"""A failed lease commit withholds the ACK (issue 13): the real DHCP shell, a real udhcpc, the wire captured.

Another connection holds the SQLite database's write lock (`BEGIN EXCLUSIVE`), so
`store.save_leases` in `DhcpServer._flush_once` fails ("database is locked", after
the 5 s busy timeout). While it does, no DHCPACK may leave the server: the capture on
the client's interface shows OFFERs (they commit nothing) and no ACK. Once the lock
is gone, the client's next try is ACKed, and the lease is in the database.
"""

from __future__ import annotations

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


@pytest.mark.netns
def test_no_ack_leaves_while_the_lease_commit_fails(tmp_path: Path) -> None:
    need("tcpdump", "busybox")
    pair = NetnsPair()
    try:
        pair.run(pair.cli_ns, "ip", "link", "set", pair.cli_if, "address", MAC)
        server = pair.start_server(tmp_path)
        db = tmp_path / "data" / "ramboot.db"
        lock = sqlite3.connect(db, timeout=1, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the write lock: every commit the server tries fails
        pcap = tmp_path / "locked.pcap"
        cap = _capture(pair, pcap)
        script = tmp_path / "never.sh"
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
        # udhcpc: 3 DISCOVERs, 3 s apart; each OFFER is answered with a REQUEST that cannot commit
        res = pair.run(pair.cli_ns, "busybox", "udhcpc", "-i", pair.cli_if, "-f", "-q", "-n", "-t", "3", "-T", "3",
                       "-s", str(script), timeout=60, check=False)
        time.sleep(6)  # a REQUEST still waiting on the busy timeout: its flush fails too
        pair.stop(cap)
        assert res.returncode != 0, f"udhcpc got a lease while the commit failed: {res.stdout}{res.stderr}"
        sent = _server_types(pcap)
        assert 2 in sent and 5 not in sent, sent  # OFFERs went out (they commit nothing), no ACK
        log = (tmp_path / "server.log").read_text()
        assert "lease commit failed" in log and "replies withheld" in log, log[-2000:]
        rows = sqlite3.connect(db).execute("select count(*) from leases where mac = ?", (MAC,)).fetchone()
        assert rows == (0,)  # the reader sees what was committed: nothing

        lock.execute("ROLLBACK")
        lock.close()
        pcap2 = tmp_path / "unlocked.pcap"
        cap = _capture(pair, pcap2)
        lease = udhcpc(pair, tmp_path)
        time.sleep(1.0)  # the capture writes what it has seen
        pair.stop(cap)
        assert 5 in _server_types(pcap2)  # the ACK, now that the store works again
        rows = sqlite3.connect(db).execute("select ip from leases where mac = ?", (MAC,)).fetchall()
        assert rows == [(lease["ip"],)]
        assert server.poll() is None  # still serving
    finally:
        pair.close()
