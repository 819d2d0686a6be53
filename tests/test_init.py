"""`ramboot init` on a real link in a network namespace: the config it writes loads, serves, and fits the link."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from ramboot.config import load_config
from ramboot.init_cli import PACKAGED_CONFIG, pick_range
from ramboot.lab.netns import Lab
from ramboot.lab.server import ramboot_cmd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def lab(tmp_path: Path):
    the_lab = Lab(ns=f"rbi-{os.getpid()}-{tmp_path.name}"[:40], root=tmp_path / "lab")
    the_lab.create()
    yield the_lab
    the_lab.teardown()


def run_init(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.ns, *ramboot_cmd(), "init", "--probe-seconds", "1.5", *args],
                          capture_output=True, text=True, timeout=60)


def test_range_avoids_own_address_and_router() -> None:
    iface = ipaddress.IPv4Interface("10.40.0.100/24")
    a = ipaddress.IPv4Address
    assert pick_range(iface, {a("10.40.0.100"), a("10.40.0.1")}) == (a("10.40.0.101"), a("10.40.0.254"))
    assert pick_range(ipaddress.IPv4Interface("10.0.0.1/30"), {a("10.0.0.1")}) == (a("10.0.0.2"), a("10.0.0.2"))
    assert pick_range(ipaddress.IPv4Interface("10.0.0.1/31"), {a("10.0.0.1")}) is None


@pytest.mark.netns
@needs_root
def test_full_mode_config_serves_a_dhcp_client(lab: Lab, tmp_path: Path) -> None:
    lab.add_peer(f"{lab.ns}-c", "172.22.33.250/24")  # a client end; its address is dropped before udhcpc runs
    lab.ip("route", "add", "default", "via", "172.22.33.1")
    cfg, data = tmp_path / "etc" / "ramboot.toml", tmp_path / "data"
    p = run_init(lab, "--interface", "rb0", "--config", str(cfg), "--data-dir", str(data))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "-> mode full" in p.stdout
    c = load_config(cfg)
    assert (c.network.interface, str(c.network.address), c.dhcp.mode) == ("rb0", "172.22.33.2", "full")
    assert c.dhcp.range == "172.22.33.3-172.22.33.254" and str(c.dhcp.router) == "172.22.33.1"
    assert c.data_dir == data
    lab.spawn("serve", [*ramboot_cmd(), "serve", "--config", str(cfg)], log=tmp_path / "serve.log")
    peer = f"{lab.ns}-c"
    subprocess.run(["ip", "-n", peer, "addr", "flush", "dev", "eth0"], check=True)
    got = ""
    for _ in range(20):
        u = subprocess.run(["ip", "netns", "exec", peer, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f",
                            "-t", "3", "-T", "1", "-s", "/bin/true"], capture_output=True, text=True, timeout=30)
        got = u.stdout + u.stderr
        if "obtained" in got:
            break
        time.sleep(0.5)
    leased = re.search(r"lease of (172\.22\.33\.\d+) obtained", got)
    assert leased and leased.group(1) not in ("172.22.33.1", "172.22.33.2"), got


@pytest.mark.netns
@needs_root
def test_another_dhcp_server_on_the_link_means_proxy(lab: Lab, tmp_path: Path) -> None:
    site = f"{lab.ns}-s"
    lab.add_peer(site, "172.22.33.1/24")
    lab.spawn("site", ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0",
                       "--bind-interfaces", "--dhcp-range=172.22.33.50,172.22.33.60", "--no-ping",
                       f"--dhcp-leasefile={tmp_path / 'site.leases'}"], netns=site, log=tmp_path / "site.log")
    time.sleep(1.0)  # dnsmasq ready
    cfg = tmp_path / "ramboot.toml"
    p = run_init(lab, "--interface", "rb0", "--config", str(cfg), "--data-dir", str(tmp_path / "data"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "172.22.33.1 -> mode proxy" in p.stdout
    c = load_config(cfg)
    assert c.dhcp.mode == "proxy" and c.dhcp.range is None
    # --mode overrides the probe.
    p = run_init(lab, "--interface", "rb0", "--config", str(cfg), "--mode", "full", "--force")
    assert p.returncode == 0, p.stdout + p.stderr
    assert load_config(cfg).dhcp.mode == "full"


@pytest.mark.netns
@needs_root
def test_refusals_are_one_line(lab: Lab, tmp_path: Path) -> None:
    lab.ip("link", "add", "bare0", "type", "veth", "peer", "name", "bare1")
    lab.ip("link", "set", "bare0", "up")
    cfg = tmp_path / "ramboot.toml"
    p = run_init(lab, "--interface", "bare0", "--config", str(cfg), "--mode", "full")
    assert p.returncode == 1 and p.stderr.strip() == \
        "ramboot: error: bare0 has no IPv4 address: give it one (ip addr add A.B.C.D/N dev bare0)", p.stderr
    assert not cfg.exists()
    cfg.write_text("# mine\n")
    p = run_init(lab, "--interface", "rb0", "--config", str(cfg), "--mode", "full")
    assert p.returncode == 1 and p.stderr.strip() == f"ramboot: error: {cfg} exists: give --force to overwrite it", p.stderr
    assert cfg.read_text() == "# mine\n"
    # The package's placeholder holds no choice of the operator's: init replaces it without --force.
    cfg.write_text(PACKAGED_CONFIG)
    p = run_init(lab, "--interface", "rb0", "--config", str(cfg), "--mode", "proxy")
    assert p.returncode == 0, p.stderr
    assert load_config(cfg).dhcp.mode == "proxy"
