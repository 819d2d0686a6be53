"""`ramboot doctor`, run for real inside namespaces these tests make (never on the host's network)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from ramboot.doctor import nft_blocks
from ramboot.lab.netns import Lab
from ramboot.lab.server import lab_config_text, ramboot_cmd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def lab(tmp_path: Path):
    the_lab = Lab(ns=f"rbd-{os.getpid()}-{tmp_path.name}"[:40], root=tmp_path / "lab")
    the_lab.create()
    yield the_lab
    the_lab.teardown()


def run_doctor(lab: Lab, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.ns, *ramboot_cmd(), "doctor", "--config", str(config),
                           "--probe-seconds", "1.5"], capture_output=True, text=True, timeout=60)


def write_config(lab: Lab, tmp_path: Path, dhcp: str | None = None, image: bool = True) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if image:
        write_fake_image(data)
    cfg = tmp_path / "ramboot.toml"
    cfg.write_text(lab_config_text(lab, data, dhcp=dhcp))
    return cfg


def fails(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


@pytest.mark.netns
@needs_root
def test_clean_lab_passes(lab: Lab, tmp_path: Path) -> None:
    p = run_doctor(lab, write_config(lab, tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all checks passed" in p.stdout
    assert "rb0 has 172.22.33.2/24" in p.stdout


@pytest.mark.netns
@needs_root
def test_each_problem_has_one_line_with_its_fix(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(lab, tmp_path, image=False)
    # A process holding the TFTP port.
    squatter = lab.spawn("squatter", [sys.executable, "-c",
                                      "import socket,time; s=socket.socket(2,2); s.bind(('0.0.0.0',69)); time.sleep(120)"])
    # A rogue DHCP server on the segment.
    rogue = f"{lab.ns}-r"
    lab.add_peer(rogue, "172.22.33.1/24")
    lab.spawn("rogue", ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0",
                        "--bind-interfaces", "--dhcp-range=172.22.33.50,172.22.33.60", "--no-ping",
                        f"--dhcp-leasefile={tmp_path / 'rogue.leases'}"], netns=rogue, log=tmp_path / "rogue.log")
    # A firewall dropping HTTP.
    nft = "add table inet rbtest\nadd chain inet rbtest input { type filter hook input priority 0; policy accept; }\n" \
          "add rule inet rbtest input tcp dport 80 drop\n"
    subprocess.run(["ip", "netns", "exec", lab.ns, "nft", "-f", "-"], input=nft, text=True, check=True)
    time.sleep(1.0)  # dnsmasq ready
    p = run_doctor(lab, cfg)
    out = p.stdout
    assert p.returncode == 1, out + p.stderr
    bad = fails(out)
    assert any("port 69/udp (TFTP) is held by python" in f and f"fix: kill {squatter.pid}" in f for f in bad), out
    assert any("another DHCP server 172.22.33.1" in f and 'mode = "proxy"' in f for f in bad), out
    assert any("drops tcp port 80" in f and 'nft insert rule inet rbtest input iifname "rb0" tcp dport 80 accept' in f
               for f in bad), out
    assert any("default image demo" in f and f"ramboot image build demo --data-dir {tmp_path / 'data'}" in f for f in bad), out
    assert len(bad) == 4, out


@pytest.mark.netns
@needs_root
def test_proxy_mode_without_a_site_dhcp_server(lab: Lab, tmp_path: Path) -> None:
    p = run_doctor(lab, write_config(lab, tmp_path, dhcp='mode = "proxy"\n'))
    assert p.returncode == 1
    assert any("proxy mode needs one" in f for f in fails(p.stdout)), p.stdout


@pytest.mark.netns
@needs_root
def test_missing_interface(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(lab, tmp_path)
    cfg.write_text(cfg.read_text().replace('interface = "rb0"', 'interface = "nosuch0"'))
    p = run_doctor(lab, cfg)
    assert p.returncode == 1
    assert any("interface nosuch0 does not exist" in f and "rb0" in f for f in fails(p.stdout)), p.stdout


def _chain(name: str, hook: str | None = None, policy: str = "accept") -> dict:
    c = {"family": "inet", "table": "f", "name": name}
    if hook:
        c.update(hook=hook, type="filter", prio=0, policy=policy)
    return {"chain": c}


def _rule(chain: str, *expr: dict) -> dict:
    return {"rule": {"family": "inet", "table": "f", "chain": chain, "expr": list(expr)}}


def _dport(proto: str, right) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": right}}


def test_nft_policy_drop_with_accepts_and_jumps() -> None:
    ruleset = [
        _chain("input", "input", "drop"), _chain("svc"),
        _rule("input", {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
              {"accept": None}),
        _rule("input", {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "rb0"}},
              {"jump": {"target": "svc"}}),
        _rule("svc", _dport("udp", {"set": [67, 69]}), {"accept": None}),
        _rule("svc", _dport("tcp", {"range": [80, 90]}), {"counter": None}, {"accept": None}),
    ]
    assert nft_blocks(ruleset, "udp", 69, "rb0") == []
    assert nft_blocks(ruleset, "tcp", 80, "rb0") == []
    assert nft_blocks(ruleset, "udp", 4011, "rb0") == [("inet", "f", "input")]
    assert nft_blocks(ruleset, "udp", 69, "eth9") == [("inet", "f", "input")]


def test_no_config_points_to_init_and_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from ramboot import doctor as doctor_mod

    looked = tmp_path / "etc-ramboot.toml"
    monkeypatch.setattr(doctor_mod, "DEFAULT_CONFIG", looked)
    r = CliRunner().invoke(doctor_mod.doctor, ["--probe-seconds", "0"])
    assert r.exit_code == 1
    assert r.output.splitlines()[0] == (f"FAIL  no config: no --config given and {looked} does not exist; "
                                        "fix: ramboot init --interface IF writes one for the provisioning link")
    assert f"in {looked}" not in r.output  # no fix says to edit a file that is not there
