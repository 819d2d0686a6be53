"""Two client subnets behind ISC's dhcrelay (Debian isc-dhcp-relay) in a router namespace, one
ramboot DHCP server with a `[[dhcp.subnet]]` for each: every client gets an address, mask and
router of its own subnet (RFC 2131 §4.3.1, RFC 1542 §4).

    c1 (udhcpc) --10.60.1.0/24-- router (dhcrelay) --10.231.7.0/24-- server (10.231.7.1)
    c2 (dhclient) --10.60.2.0/24--/
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dhcp_netns import HERE, _readline, dhclient, need, sh
from test_dhcp_relay_pktinfo import Net, udhcpc

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("dhcp-netns")]

SERVER_IP = "10.231.7.1"
ROUTER_UP = "10.231.7.254"
CONFIG = """
[[dhcp.subnet]]
range = "10.60.1.100-10.60.1.150"
router = "10.60.1.1"
domain = "rack-a.example"
group = "rack-a"

[[dhcp.subnet]]
range = "10.60.2.20-10.60.2.60"
netmask = "255.255.255.128"
router = "10.60.2.1"
domain = "rack-b.example"
group = "rack-b"
"""


class _Client:
    """What `dhcp_netns.dhclient` needs of a pair: the client's namespace and interface."""

    def __init__(self, net: Net, ns: str, ifname: str):
        self.cli_ns, self.cli_if, self.popen, self.stop = ns, ifname, net.popen, net.stop


def _start_server(net: Net, ns: str, tmp: Path) -> None:
    cfg = tmp / "ramboot.toml"
    (tmp / "data").mkdir(exist_ok=True)
    cfg.write_text(f'data_dir = "{tmp / "data"}"\n[network]\ninterface = "s0"\naddress = "{SERVER_IP}"\n'
                   f'[dhcp]\nmode = "full"\nlease_time = 600\n{CONFIG}')
    p = net.popen(ns, sys.executable, str(HERE / "dhcp_server_main.py"), str(cfg), SERVER_IP,
                  stdout=subprocess.PIPE, stderr=open(tmp / "server.log", "ab"))
    if _readline(p, 15).strip() != b"ready":
        pytest.fail(f"dhcp server did not start: {(tmp / 'server.log').read_text()[-2000:]}")


def test_two_subnets_behind_dhcrelay_each_get_addresses_of_their_own(tmp_path: Path) -> None:
    need("dhcrelay", "dhclient")
    net = Net()
    try:
        srv, rtr, c1, c2 = net.ns("s"), net.ns("r"), net.ns("a"), net.ns("b")
        net.link(srv, "s0", rtr, "r0")
        net.link(rtr, "r1", c1, "c0")
        net.link(rtr, "r2", c2, "c0")
        net.addr(srv, "s0", f"{SERVER_IP}/24")
        net.addr(rtr, "r0", f"{ROUTER_UP}/24")
        net.addr(rtr, "r1", "10.60.1.1/24")
        net.addr(rtr, "r2", "10.60.2.1/25")
        sh("ip", "-n", srv, "route", "add", "10.60.0.0/16", "via", ROUTER_UP)
        _start_server(net, srv, tmp_path)
        # -id: the client-facing interfaces (giaddr = each one's address), -iu: towards the server.
        relay_log = open(tmp_path / "dhcrelay.log", "wb")
        relay = net.popen(rtr, "dhcrelay", "-d", "-4", "-id", "r1", "-id", "r2", "-iu", "r0",
                          "-pf", str(tmp_path / "dhcrelay.pid"), SERVER_IP, stdout=relay_log, stderr=relay_log)
        time.sleep(1.0)
        assert relay.poll() is None, (tmp_path / "dhcrelay.log").read_text()
        a = udhcpc(net, c1, "c0", tmp_path)
        b = dhclient(_Client(net, c2, "c0"), tmp_path)  # type: ignore[arg-type]
        a2 = udhcpc(net, c1, "c0", tmp_path)  # a second client run on rack A: the same lease back
    finally:
        net.close()
    log = (tmp_path / "dhcrelay.log").read_text()
    assert ipaddress.ip_address(a["ip"]) in ipaddress.ip_network("10.60.1.0/24"), (a, log)
    assert int(ipaddress.ip_address(a["ip"]).packed[-1]) in range(100, 151)
    assert (a["subnet"], a["router"], a["domain"], a["serverid"]) == (
        "255.255.255.0", "10.60.1.1", "rack-a.example", SERVER_IP), a
    assert a2["ip"] == a["ip"]
    assert ipaddress.ip_address(b["new_ip_address"]) in ipaddress.ip_network("10.60.2.0/25"), (b, log)
    assert (b["new_subnet_mask"], b["new_routers"], b["new_domain_name"]) == (
        "255.255.255.128", "10.60.2.1", "rack-b.example"), b
    assert "Forwarded BOOTREPLY" in log or "forwarded BOOTREPLY" in log.lower(), log  # the replies came back through it
