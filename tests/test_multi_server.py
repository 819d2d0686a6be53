"""Two `ramboot serve` in full DHCP mode, one range, one PostgreSQL database, one bridge.

perfdhcp (Kea's) storms both at once: every ACK on the wire is captured with
tcpdump, and no address may be ACKed to two MACs. Then each client asks again,
listening for both servers' offers: both must offer it the address it holds
(a machine keeps its address whichever server answers). `GET /api/v1/leases`
is the same on both, and `GET /api/v1/servers` lists both.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dhcp_netns import need, udp_payloads
from multi_server import Servers
from ramboot.lab.netns import Lab
from ramboot.proto.dhcp_codec import BOOTREPLY, MsgType, decode

pytestmark = [pytest.mark.netns]
HERE = Path(__file__).parent
CLIENT_IP = "172.22.33.250/24"


@pytest.fixture
def two(tmp_path: Path, pg_url: str):
    if os.geteuid() != 0:
        pytest.fail("needs root for network namespaces")
    lab = Lab(ns=f"rbm{secrets.token_hex(3)}", root=tmp_path / "lab")  # peers' veths are p-<ns><suffix>: 15 chars
    servers = Servers(lab, tmp_path, pg_url)
    try:
        servers.create()
        yield servers
    finally:
        lab.teardown()


def _capture(servers: Servers, pcap: Path) -> None:
    lab = servers.lab
    log = pcap.with_suffix(".log")
    lab.spawn("capture", ["tcpdump", "-i", lab.bridge, "-U", "--immediate-mode", "-n", "-s", "1500", "-w", str(pcap),
                          "udp port 67 or udp port 68"], log=log)
    deadline = time.monotonic() + 10
    while "listening on" not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < deadline, f"tcpdump did not start: {log.read_text() if log.exists() else ''}"
        time.sleep(0.1)


def _acks(pcap: Path) -> list:
    out = []
    for sport, _dport, payload in udp_payloads(pcap.read_bytes()):
        if sport != 67:
            continue
        try:
            p = decode(payload)
        except Exception:
            continue
        if p.op == BOOTREPLY and p.msg_type == MsgType.ACK and p.yiaddr != "0.0.0.0":
            out.append(p)
    return out


def test_two_servers_one_range_no_address_twice(two: Servers, tmp_path: Path) -> None:
    need("perfdhcp", "tcpdump")
    two.start_all()
    lab = two.lab
    cli = f"{lab.ns}c"
    lab.add_peer(cli, CLIENT_IP)
    pcap = tmp_path / "dhcp.pcap"
    _capture(two, pcap)
    # 60 exchanges a second for 4 s from 50 clients: each DISCOVER is answered by both servers,
    # and a client that comes back may be answered by either.
    perf = lab.spawn("perfdhcp", ["perfdhcp", "-4", "-l", "eth0", "-r", "60", "-R", "50", "-p", "4", "-t", "1"],
                     log=tmp_path / "perfdhcp.log", netns=cli)
    perf.wait(60)
    out = (tmp_path / "perfdhcp.log").read_text()
    # then: each of 40 clients binds, and asks again listening to every offer
    p = subprocess.run(["ip", "netns", "exec", cli, sys.executable, str(HERE / "dhcp_two_offers.py"), "eth0", "40"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout)
    time.sleep(1.0)
    lab.stop("capture")
    acks = _acks(pcap)
    by_ip: dict[str, set[str]] = {}
    for a in acks:
        by_ip.setdefault(a.yiaddr, set()).add(a.mac)
    twice = {ip: macs for ip, macs in by_ip.items() if len(macs) > 1}
    assert not twice, f"addresses ACKed to two machines: {twice}"
    sids = {a.server_id for a in acks}
    assert sids == {"172.22.33.2", "172.22.33.3"}, f"ACKs came from {sids}: both servers should have bound some"
    assert len(acks) >= 100, f"only {len(acks)} ACKs captured; perfdhcp said:\n{out[-1500:]}"
    # a machine keeps its address whichever server answers
    assert report["bound"] == 40, report
    assert report["both_offered"] >= 35, report  # a late or dropped second offer is UDP, not a conflict
    assert report["moved"] == [], f"offers of another address to a bound client: {report['moved']}"
    # one view: the same leases from both servers, and each lists the other
    time.sleep(0.5)
    l1, l2 = (two.api(s, "/api/v1/leases") for s in two.srv)
    assert l1 is not None and l1 == l2, "GET /api/v1/leases differs between the servers"
    leased = {x["ip"]: x["mac"] for x in l1}
    for a in acks:
        if a.yiaddr in leased:
            assert leased[a.yiaddr] == a.mac or by_ip[a.yiaddr] == {a.mac}
    servers = two.api(two.srv[1], "/api/v1/servers")
    assert {s["name"] for s in servers if s["alive"]} == {"s1", "s2"}, servers
    assert any(s["this"] and s["name"] == "s2" for s in servers), servers
