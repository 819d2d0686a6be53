"""A blank VM behind ISC's dhcrelay PXE-boots into its RAM root through `ramboot serve`, whose
only address is on another subnet: DHCP through the relay (giaddr), TFTP and HTTP routed.

    VM --rb0 172.22.33.0/24-- lab namespace (router: 172.22.33.2, dhcrelay) --10.62.0.0/24-- server (10.62.0.2)
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dhcp_netns import need
from ramboot.lab.netns import Lab
from ramboot.lab.server import LAB_KERNEL_ARGS, link_image, ramboot_cmd, tail
from ramboot.lab.vm import boot_vm, format_timeline, random_mac
from test_e2e_lab import ARTIFACTS, BOOT_TIMEOUT, _explain, built, shared_dir  # noqa: F401  (session fixtures)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

SERVER_IP = "10.62.0.2"
ROUTER_UP = "10.62.0.1"


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def test_a_vm_behind_dhcrelay_boots_from_a_server_on_another_subnet(built, tmp_path: Path) -> None:  # noqa: F811
    need("dhcrelay")
    lab = Lab(ns=f"rbq{secrets.token_hex(3)}", root=tmp_path / "lab")
    srv = f"{lab.ns}-s"
    try:
        lab.create()  # rb0 with 172.22.33.2: here the router's address on the VMs' subnet
        _sh("ip", "netns", "add", srv)
        _sh("ip", "link", "add", "rq-up", "netns", lab.ns, "type", "veth", "peer", "name", "s0", "netns", srv)
        _sh("ip", "-n", lab.ns, "addr", "add", f"{ROUTER_UP}/24", "dev", "rq-up")
        _sh("ip", "-n", lab.ns, "link", "set", "rq-up", "up")
        _sh("ip", "-n", srv, "addr", "add", f"{SERVER_IP}/24", "dev", "s0")
        _sh("ip", "-n", srv, "link", "set", "s0", "up")
        _sh("ip", "-n", srv, "link", "set", "lo", "up")
        _sh("ip", "-n", srv, "route", "add", "172.22.33.0/24", "via", ROUTER_UP)
        _sh("ip", "netns", "exec", lab.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        link_image(built[0], lab.data_dir, "demo")
        cfg = tmp_path / "ramboot.toml"
        cfg.write_text(
            f'data_dir = "{lab.data_dir}"\n[network]\ninterface = "s0"\naddress = "{SERVER_IP}"\n'
            '[dhcp]\nmode = "full"\nlease_time = 600\n'
            '[[dhcp.subnet]]\nrange = "172.22.33.100-172.22.33.200"\nrouter = "172.22.33.2"\ngroup = "rack-a"\n'
            f'[tftp]\nport = 69\n[http]\nport = 80\n[boot]\nkernel_args = "{LAB_KERNEL_ARGS}"\n')
        log = tmp_path / "serve.log"
        lab.spawn("server", [*ramboot_cmd(), "serve", "--config", str(cfg)], log=log, netns=srv)
        base = f"http://{SERVER_IP}"
        deadline = time.monotonic() + 30
        while lab.http(f"{base}/api/v1/nodes", timeout=1.0)[0] == 0:
            assert time.monotonic() < deadline and lab.alive("server"), tail(log, 30)
            time.sleep(0.2)
        relay_log = tmp_path / "dhcrelay.log"
        lab.spawn("relay", ["dhcrelay", "-d", "-4", "-id", lab.bridge, "-iu", "rq-up", "-pf",
                            str(tmp_path / "dhcrelay.pid"), SERVER_IP], log=relay_log)
        time.sleep(1.0)
        assert lab.alive("relay"), relay_log.read_text()
        r = boot_vm(lab, "bios", random_mac(), BOOT_TIMEOUT, echo=sys.stdout.buffer, api_base=base, accel=built[1])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "relay-vm.timeline.txt").write_text(format_timeline(r) + "\n")
        shutil.copyfile(r.console_log, ARTIFACTS / "relay-vm.console.log")
        assert r.ok, _explain(r) + "\n" + tail(log, 30)
        acks = [m for m in r.marks if m.stage == "dhcp-ack"]
        assert acks and all(str(m.detail.get("ip", "")).startswith("172.22.33.") for m in acks), acks
        assert "Forwarded BOOTREPLY" in relay_log.read_text()  # every answer came back through the relay
    finally:
        lab.teardown()
        subprocess.run(["ip", "netns", "del", srv], capture_output=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if (tmp_path / "serve.log").exists():
            shutil.copyfile(tmp_path / "serve.log", ARTIFACTS / "relay-vm.serve.log")
