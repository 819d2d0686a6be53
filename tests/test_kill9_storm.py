"""kill -9 of the real `ramboot serve` in the middle of a perfdhcp storm (issue 13).

Set-up: two namespaces and a veth (`bench.util.NetnsPair`: server
10.77.0.1/16, perfdhcp on 10.77.255.254/16, as in bench/dhcp_bench.py), the real
`ramboot serve --config FILE` in full mode with its durable SQLite store, Kea's
`perfdhcp` at a few hundred DORA a second with random MACs, and tcpdump on the
client side capturing every DHCP datagram on the wire.

Part-way into the storm the server is killed with SIGKILL (no flush, no
shutdown), while perfdhcp keeps sending. The capture then says which clients
were ACKed: those, and only those, were promised an address. The server is
restarted on the same data directory, and a small relay-style sender (it
answers as perfdhcp does, from port 67 with giaddr set) asks again:

1. first, new clients that were never seen: none may be offered an address
   that was ACKed to another client (had an ACK left before its commit, its
   address would be free again and the first new clients would get it);
2. then every ACKed client (its MAC, and its client identifier if it sent one),
   in random order and with no requested address (option 50): each must be
   offered its own ACKed address again;
3. and the lease table holds every ACKed (MAC, address).

A server that ACKed before committing would fail 1, 2 and 3 for the ACKs of
the batch the kill interrupted.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench.util import NetnsPair

from dhcp_netns import need, udp_payloads
from ramboot.proto.dhcp_codec import BOOTREPLY, BOOTREQUEST, Opt, decode

pytestmark = [pytest.mark.netns]

RAMBOOT = str(Path(sys.executable).with_name("ramboot"))
POOL = ("10.77.1.0", "10.77.200.255")
RATE = 400  # DORA a second: well under what the server sustains on a busy 2-core machine
KILL_AFTER = 3.0  # seconds into the storm
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "kill9"

# The relay-style sender: DISCOVERs from (its address, 67) with giaddr set, like perfdhcp;
# the server answers to giaddr:67. Prints {"mac": yiaddr} for every OFFER it got.
SENDER = r"""
import json, random, select, socket, sys, time
sys.path.insert(0, sys.argv[1])
from ramboot.proto.dhcp_codec import BOOTREQUEST, DhcpPacket, MsgType, Opt, decode, encode
me, server, asks = sys.argv[2], sys.argv[3], json.load(open(sys.argv[4]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((me, 67))
want = {}
for mac, cid in asks:
    xid = random.getrandbits(32)
    opts = {Opt.MESSAGE_TYPE: bytes([MsgType.DISCOVER])}
    if cid:
        opts[Opt.CLIENT_ID] = bytes.fromhex(cid)
    pkt = DhcpPacket(op=BOOTREQUEST, xid=xid, giaddr=me, hops=1, chaddr=bytes.fromhex(mac.replace(":", "")),
                     options=opts)
    want[xid] = (mac, encode(pkt))
got = {}
for attempt in range(5):
    pending = [x for x in want if want[x][0] not in got]
    if not pending:
        break
    for i, xid in enumerate(pending):
        s.sendto(want[xid][1], (server, 67))
        if i % 50 == 49:
            time.sleep(0.01)  # a pace the server's socket buffer takes without loss
    end = time.monotonic() + 3
    while time.monotonic() < end and len(got) < len(want):
        r, _, _ = select.select([s], [], [], 0.2)
        if not r:
            continue
        p = decode(s.recv(4096))
        if p.op == 2 and p.xid in want and p.msg_type == MsgType.OFFER:
            got[want[p.xid][0]] = p.yiaddr
print(json.dumps(got))
"""


def _wire(pcap: Path) -> tuple[list, list]:
    """(requests, replies) as decoded DhcpPackets, in capture order."""
    reqs, reps = [], []
    for _sport, _dport, payload in udp_payloads(pcap.read_bytes()):
        try:
            p = decode(payload)
        except Exception:
            continue
        (reqs if p.op == BOOTREQUEST else reps if p.op == BOOTREPLY else []).append(p)
    return reqs, reps


def _serve(net: NetnsPair, tmp: Path, data: Path, log: Path) -> subprocess.Popen:
    cfg = tmp / "ramboot.toml"
    cfg.write_text(
        f'data_dir = "{data}"\n[network]\ninterface = "{net.srv_if}"\naddress = "{net.srv_ip}"\n'
        f'[dhcp]\nmode = "full"\nrange = "{POOL[0]}-{POOL[1]}"\nlease_time = 3600\n'
        "[tftp]\nport = 16969\n[http]\nport = 18080\n[boot]\nunknown_nodes = \"boot\"\n"
    )
    p = subprocess.Popen([*net.exec(net.srv, RAMBOOT, "serve", "--config", str(cfg))], stdout=subprocess.DEVNULL,
                         stderr=open(log, "ab"), start_new_session=True)
    end = time.monotonic() + 30
    while b"serving on" not in log.read_bytes().split(b"starting again")[-1]:
        assert p.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
        time.sleep(0.05)
    return p


def _stop(p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        os.kill(p.pid, sig)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def _ask(net: NetnsPair, tmp: Path, asks: list[tuple[str, str | None]], name: str) -> dict[str, str]:
    f = tmp / f"{name}.json"
    f.write_text(json.dumps(asks))
    src = str(Path(__file__).resolve().parent.parent / "src")
    r = subprocess.run([*net.exec(net.cli, sys.executable, "-c", SENDER, src, net.cli_ip, net.srv_ip, str(f))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_kill_9_mid_perfdhcp_storm_keeps_every_acked_lease(tmp_path: Path) -> None:
    need("perfdhcp", "tcpdump")
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data, log, pcap = tmp_path / "data", tmp_path / "serve.log", tmp_path / "storm.pcap"
    data.mkdir()
    procs: list[subprocess.Popen] = []
    with NetnsPair() as net:
        try:
            srv = _serve(net, tmp_path, data, log)
            procs.append(srv)
            cap = subprocess.Popen([*net.exec(net.cli, "tcpdump", "-i", net.cli_if, "-n", "-U", "--immediate-mode",
                                              "-B", "16384", "-w", str(pcap), "udp port 67 or udp port 68")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            procs.append(cap)
            assert cap.stderr is not None and b"listening on" in cap.stderr.readline()
            perf = subprocess.Popen([*net.exec(net.cli, "perfdhcp", "-4", "-l", net.cli_if, "-r", str(RATE),
                                               "-R", "100000", "-p", str(int(KILL_AFTER) + 4))],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            procs.append(perf)
            time.sleep(KILL_AFTER)
            assert srv.poll() is None, log.read_text()[-3000:]
            os.kill(srv.pid, signal.SIGKILL)  # mid-storm: no shutdown, no flush
            killed_at = time.time()
            srv.wait(10)
            perf_out, _ = perf.communicate(timeout=60)  # perfdhcp keeps sending to a dead server
            time.sleep(0.5)
            cap.send_signal(signal.SIGTERM)
            cap_err = cap.communicate(timeout=15)[1].decode()
            m = re.search(r"(\d+) packets? dropped by kernel", cap_err)
            assert m and int(m.group(1)) == 0, f"the capture missed packets: {cap_err}"

            reqs, reps = _wire(pcap)
            acks = [p for p in reps if p.msg_type == 5]
            assert len(acks) >= 200, f"only {len(acks)} ACKs before the kill: {perf_out[-1500:]}"
            # perfdhcp was still sending when the server died: DISCOVERs nobody answered
            unoffered = {p.xid for p in reqs if p.msg_type == 1} - {p.xid for p in reps if p.msg_type == 2}
            assert len(unoffered) > RATE, f"the kill did not land mid-storm: {len(unoffered)} DISCOVERs unanswered"
            unanswered = {p.xid for p in reqs if p.msg_type == 3} - {p.xid for p in acks}
            cid = {}  # the client identifier each MAC sent, if any
            for p in reqs:
                if p.mac and Opt.CLIENT_ID in p.options:
                    cid[p.mac] = p.options[Opt.CLIENT_ID].hex()
            acked: dict[str, str] = {}
            for p in acks:
                assert p.mac is not None
                assert acked.setdefault(p.mac, p.yiaddr) == p.yiaddr, f"{p.mac} ACKed two addresses"
            by_ip: dict[str, str] = {}
            for mac, ip in acked.items():
                assert by_ip.setdefault(ip, mac) == mac, f"{ip} ACKed to {by_ip[ip]} and {mac}"

            # the restart, on the same data directory
            with open(log, "ab") as f:
                f.write(b"--- starting again\n")
            srv = _serve(net, tmp_path, data, log)
            procs.append(srv)

            # 1. new clients first: none may get an ACKed address
            fresh = [(f"02:9e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01", None) for i in range(300)]
            new_offers = _ask(net, tmp_path, fresh, "fresh")
            assert len(new_offers) == len(fresh), f"{len(fresh) - len(new_offers)} new clients got no OFFER"
            taken = {ip: mac for mac, ip in new_offers.items() if ip in by_ip}
            assert not taken, f"new clients offered ACKed addresses: {list(taken.items())[:5]}"

            # 2. every ACKed client, in random order, no requested address: its own address again
            asks = [(mac, cid.get(mac)) for mac in acked]
            random.shuffle(asks)
            again = _ask(net, tmp_path, asks, "acked")
            missing = [m for m in acked if m not in again]
            wrong = {m: (acked[m], again[m]) for m in acked if m in again and again[m] != acked[m]}
            assert not missing, f"{len(missing)} ACKed clients got no OFFER after the restart: {missing[:5]}"
            assert not wrong, f"{len(wrong)} ACKed clients offered another address: {list(wrong.items())[:5]}"

            # 3. the lease table holds every ACKed lease
            rows = dict(sqlite3.connect(data / "ramboot.db").execute("select mac, ip from leases").fetchall())
            lost = {m: ip for m, ip in acked.items() if rows.get(m) != ip}
            assert not lost, f"{len(lost)} ACKed leases not in the store: {list(lost.items())[:5]}"
            assert "Traceback" not in log.read_text()

            figures = {
                "killed_after_s": KILL_AFTER, "rate": RATE, "acks_captured": len(acks), "acked_clients": len(acked),
                "requests_unanswered_at_kill": len(unanswered), "discovers_after_kill": len(unoffered),
                "fresh_clients": len(fresh),
                "fresh_offered_an_acked_address": len(taken), "re_offers_checked": len(again),
                "re_offers_wrong": len(wrong), "leases_in_store": len(rows), "client_ids_sent": len(cid),
                "killed_at": killed_at,
            }
            (ARTIFACTS / "figures.json").write_text(json.dumps(figures, indent=1))
            print(json.dumps(figures))
        finally:
            for p in reversed(procs):
                _stop(p)
            if pcap.exists():
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                (ARTIFACTS / "serve.log").write_bytes(log.read_bytes() if log.exists() else b"")
