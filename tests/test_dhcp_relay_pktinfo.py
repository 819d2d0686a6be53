"""The running DHCP server behind a real relay (dnsmasq --dhcp-relay, giaddr), and the address its
replies leave from on a server with several interfaces and several addresses (IP_PKTINFO).

Topology, all in namespaces made here (`rbr<random>` + suffix) and removed on exit:

    client ns --- relay ns (dnsmasq relay, 10.231.8.1 | 10.231.7.254) --- server ns (10.231.7.1, eth s0)
                                                                          other interface s1: 10.231.6.1,
                                                                          default route there
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dhcp_netns import HERE, _readline, need, sh
from ramboot.proto.dhcp_codec import BOOTREPLY, BOOTREQUEST, MsgType, decode

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("dhcp-netns")]

SERVER_IP = "10.231.7.1"
RELAY_UP = "10.231.7.254"  # the relay's address on the server's segment
RELAY_DOWN = "10.231.8.1"  # its address on the clients' segment: the giaddr
OTHER_IP = "10.231.6.1"  # the server's other interface
RANGE = "10.231.8.100-10.231.8.150"


def frames(pcap: bytes) -> list[tuple[str, str, int, int, bytes]]:
    """(ip src, ip dst, udp sport, udp dport, payload) of each IPv4/UDP frame in an Ethernet pcap."""
    endian = "<" if pcap[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    out, i = [], 24
    while i + 16 <= len(pcap):
        incl = struct.unpack(endian + "IIII", pcap[i : i + 16])[2]
        f = pcap[i + 16 : i + 16 + incl]
        i += 16 + incl
        if len(f) < 42 or f[12:14] != b"\x08\x00" or f[23] != 17:
            continue
        ihl = (f[14] & 0x0F) * 4
        udp = f[14 + ihl :]
        sport, dport, ulen = struct.unpack("!HHH", udp[:6])
        out.append((socket.inet_ntoa(f[26:30]), socket.inet_ntoa(f[30:34]), sport, dport, udp[8:ulen]))
    return out


class Net:
    """Namespaces joined by veths; processes started here are the only ones stopped."""

    def __init__(self) -> None:
        need("ip", "tcpdump", "dnsmasq", "busybox")
        if os.geteuid() != 0:
            pytest.fail("netns tests need root")
        self.tag = "rbr" + secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, suffix: str) -> str:
        name = self.tag + suffix
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a_ns: str, a_if: str, b_ns: str, b_if: str) -> None:
        sh("ip", "link", "add", self.tag + "t0", "type", "veth", "peer", "name", self.tag + "t1")
        for tmp, ns, name in ((self.tag + "t0", a_ns, a_if), (self.tag + "t1", b_ns, b_if)):
            sh("ip", "link", "set", tmp, "netns", ns)
            sh("ip", "-n", ns, "link", "set", tmp, "name", name)
            sh("ip", "-n", ns, "link", "set", name, "up")

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", ifname)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def run(self, ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, timeout=timeout, check=False)

    def capture(self, ns: str, ifname: str, pcap: Path) -> subprocess.Popen:
        log = open(pcap.with_suffix(".log"), "wb")
        p = self.popen(ns, "tcpdump", "-i", ifname, "-U", "--immediate-mode", "-n", "-w", str(pcap), "udp port 67 or udp port 68",
                       stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while b"listening on" not in pcap.with_suffix(".log").read_bytes():
            assert time.monotonic() < deadline and p.poll() is None, pcap.with_suffix(".log").read_text()
            time.sleep(0.05)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def start_server(self, ns: str, tmp: Path, interface: str, address: str, extra: str = "") -> None:
        cfg = tmp / "ramboot.toml"
        (tmp / "data").mkdir(exist_ok=True)
        cfg.write_text(f'data_dir = "{tmp / "data"}"\n[network]\ninterface = "{interface}"\naddress = "{address}"\n'
                       f'[dhcp]\nmode = "full"\nrange = "{RANGE}"\nlease_time = 600\n{extra}')
        log = open(tmp / "server.log", "ab")
        p = self.popen(ns, sys.executable, str(HERE / "dhcp_server_main.py"), str(cfg), address,
                       stdout=subprocess.PIPE, stderr=log)
        if _readline(p, 60).strip() != b"ready":  # a loaded CI machine starts Python slowly
            pytest.fail(f"dhcp server did not start: {(tmp / 'server.log').read_text()[-2000:]}")

    def close(self) -> None:
        for p in self.procs:
            self.stop(p)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def net():
    n = Net()
    try:
        yield n
    finally:
        n.close()


def udhcpc(net: Net, ns: str, ifname: str, tmp: Path, *args: str) -> dict[str, str]:
    out = tmp / f"udhcpc-{secrets.token_hex(3)}.env"
    script = tmp / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && env > "$UDHCPC_OUT"\nexit 0\n')
    script.chmod(0o755)
    res = net.run(ns, "env", f"UDHCPC_OUT={out}", "busybox", "udhcpc", "-i", ifname, "-f", "-q", "-n",
                  "-t", "6", "-T", "1", "-s", str(script), *args, timeout=30)
    if not out.exists():
        pytest.fail(f"udhcpc got no lease (rc {res.returncode}): {res.stderr[-1500:]}")
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def test_a_client_behind_a_relay_gets_a_lease_from_the_relay_subnet(net: Net, tmp_path: Path) -> None:
    """RFC 2131 §4.1/§4.3.1 with a real relay: the address comes from the giaddr's subnet, and every
    reply goes unicast to the relay's port 67, never broadcast on the server's segment."""
    srv, relay, cli = net.ns("s"), net.ns("r"), net.ns("c")
    net.link(srv, "s0", relay, "r0")
    net.link(relay, "r1", cli, "c0")
    net.addr(srv, "s0", f"{SERVER_IP}/24")
    net.addr(relay, "r0", f"{RELAY_UP}/24")
    net.addr(relay, "r1", f"{RELAY_DOWN}/24")
    sh("ip", "-n", srv, "route", "add", "10.231.8.0/24", "via", RELAY_UP)
    net.start_server(srv, tmp_path, "s0", SERVER_IP, extra=f'router = "{RELAY_DOWN}"\n')
    net.popen(relay, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--log-dhcp",
              f"--dhcp-relay={RELAY_DOWN},{SERVER_IP}", "--user=root", "--group=root", "--pid-file=",
              stdout=open(tmp_path / "relay.log", "wb"), stderr=subprocess.STDOUT)
    time.sleep(0.5)
    pcap = tmp_path / "server-side.pcap"
    cap = net.capture(srv, "s0", pcap)
    env = udhcpc(net, cli, "c0", tmp_path, "-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001")
    time.sleep(0.3)
    net.stop(cap)
    lo, hi = (ipaddress.ip_address(x) for x in RANGE.split("-"))
    assert lo <= ipaddress.ip_address(env["ip"]) <= hi, env
    assert env["subnet"] == "255.255.255.0" and env["router"] == RELAY_DOWN, env
    assert env["serverid"] == SERVER_IP and env["boot_file"] == "undionly.kpxe", env
    mac = net.run(cli, "cat", "/sys/class/net/c0/address").stdout.strip()
    replies = [(src, dst, sp, dp, decode(p)) for src, dst, sp, dp, p in frames(pcap.read_bytes()) if sp == 67 and src == SERVER_IP]
    kinds = [r[4].msg_type for r in replies if r[4].op == BOOTREPLY and r[4].mac == mac]
    assert MsgType.OFFER in kinds and MsgType.ACK in kinds, replies
    for src, dst, _sport, dport, rep in replies:
        assert (dst, dport) == (RELAY_DOWN, 67), (src, dst, dport)  # to the giaddr's server port, unicast
        assert rep.giaddr == RELAY_DOWN and rep.yiaddr == env["ip"]
    requests = [decode(p) for _s, _d, _sp, dp, p in frames(pcap.read_bytes()) if dp == 67]
    requests = [r for r in requests if r.op == BOOTREQUEST]
    assert requests and all(r.giaddr == RELAY_DOWN and r.hops >= 1 for r in requests), requests


def test_a_relay_for_a_subnet_without_a_range_gets_no_answer(net: Net, tmp_path: Path) -> None:
    """A relayed DISCOVER whose giaddr is on no subnet the server has a range for is ignored; the
    same DISCOVER from a relay on the range's subnet is answered (to that relay's port 67)."""
    srv, relay = net.ns("s"), net.ns("r")
    net.link(srv, "s0", relay, "r0")
    net.addr(srv, "s0", f"{SERVER_IP}/24")
    net.addr(relay, "r0", f"{RELAY_UP}/24")
    net.addr(relay, "r0", "10.231.5.1/24")
    net.addr(relay, "r0", f"{RELAY_DOWN}/24")
    for subnet in ("10.231.5.0/24", "10.231.8.0/24"):
        sh("ip", "-n", srv, "route", "add", subnet, "via", RELAY_UP)
    net.start_server(srv, tmp_path, "s0", SERVER_IP)
    code = f"""
import socket, sys
sys.path.insert(0, {str(HERE.parent / "src")!r})
from ramboot.proto.dhcp_codec import DhcpPacket, decode, encode
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 67))
s.settimeout(3)
answers = []
for giaddr in ("10.231.5.1", "{RELAY_UP}", "{RELAY_DOWN}"):
    p = DhcpPacket(xid=4242, giaddr=giaddr, hops=1, chaddr=bytes.fromhex("525400aa0001"),
                   options={{53: b"\\x01", 60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\\x00\\x00"}})
    s.sendto(encode(p), ("{SERVER_IP}", 67))
    try:
        answers.append(decode(s.recvfrom(2048)[0]).yiaddr)
    except socket.timeout:
        answers.append(None)
print(answers)
"""
    out = net.run(relay, "python3", "-c", code)
    # 10.231.5.0/24 has no range: silence; nor has the server's own segment (10.231.7.0/24).
    # The relay on the range's subnet, same socket, same packet otherwise: an offer from the range.
    assert out.returncode == 0 and out.stdout.strip() == "[None, None, '10.231.8.100']", out.stdout + out.stderr


def _replies_on_two_interfaces(net: Net, tmp_path: Path, s0_addresses: list[str]) -> tuple[set, list, dict]:
    """The server on s0 (addresses in that order; the last is the configured one), another interface s1
    with the default route. A client on s0 gets a lease and renews it by unicast (RFC 2131 §4.3.2).
    Returns (source addresses of the replies the client saw, DHCP replies seen on s1's wire, lease)."""
    srv, cli, other = net.ns("s"), net.ns("c"), net.ns("o")
    net.link(srv, "s0", cli, "c0")
    net.link(srv, "s1", other, "o0")
    for cidr in s0_addresses:
        net.addr(srv, "s0", cidr)
    net.addr(srv, "s1", f"{OTHER_IP}/24")
    net.addr(other, "o0", "10.231.6.2/24")
    sh("ip", "-n", srv, "route", "add", "default", "via", "10.231.6.2")
    server = s0_addresses[-1].split("/")[0]
    net.start_server(srv, tmp_path, "s0", server)
    pcap_cli, pcap_other = tmp_path / "client-side.pcap", tmp_path / "other-side.pcap"
    caps = [net.capture(cli, "c0", pcap_cli), net.capture(other, "o0", pcap_other)]
    env = udhcpc(net, cli, "c0", tmp_path, "-V", "PXEClient:Arch:00000:UNDI:002001")
    env2 = udhcpc(net, cli, "c0", tmp_path, "-r", env["ip"], "-V", "PXEClient:Arch:00000:UNDI:002001")
    time.sleep(0.3)
    for c in caps:
        net.stop(c)
    assert env["serverid"] == env2["serverid"] == server and env2["ip"] == env["ip"], (env, env2)
    replies = [(src, decode(p)) for src, _d, sp, _dp, p in frames(pcap_cli.read_bytes()) if sp == 67]
    assert len([r for _, r in replies if r.op == BOOTREPLY]) >= 4, replies  # two OFFERs, two ACKs
    leaked = [f for f in frames(pcap_other.read_bytes()) if f[2] == 67]
    return {src for src, _ in replies}, leaked, env


def test_replies_leave_by_the_request_interface_from_the_server_address(net: Net, tmp_path: Path) -> None:
    """Two interfaces, the default route on the other one: every reply (broadcast OFFER/ACK, the ACK
    to a unicast renewal) leaves through s0, from the server address, and nothing leaves by s1."""
    sources, leaked, _ = _replies_on_two_interfaces(net, tmp_path, ["10.231.8.1/24"])
    assert sources == {"10.231.8.1"}, sources
    assert leaked == [], "a DHCP reply left by the other interface"


def test_replies_come_from_the_server_identifier_when_it_is_a_secondary_address(net: Net, tmp_path: Path) -> None:
    """s0's primary address is 10.231.8.9; the configured one (the server identifier) is 10.231.8.1,
    a secondary address. The replies should come from the address they name as server identifier."""
    sources, leaked, _ = _replies_on_two_interfaces(net, tmp_path, ["10.231.8.9/24", "10.231.8.1/24"])
    assert leaked == []
    assert sources == {"10.231.8.1"}, f"replies came from {sources}, but the server identifier says 10.231.8.1"
