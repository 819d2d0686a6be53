"""Real VMs against two servers on one PostgreSQL cluster and one bridge: a dead server costs no boot.

1. Both servers up: the node is told both (two root URLs, `||` in the iPXE script).
2. One server killed -9 before the VM starts: the other answers everything.
3. The server that handed the VM its kernel killed -9 the moment the kernel runs the
   initramfs: the initramfs's DHCP, root download and reports go to the other one.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest

from multi_server import API_TOKEN, Servers
from ramboot.lab.netns import Lab
from ramboot.lab.vm import BootResult, boot_vm, format_timeline, random_mac
from test_e2e_lab import ARTIFACTS, BOOT_TIMEOUT, built, shared_dir  # noqa: F401  (session fixtures)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]


@pytest.fixture
def two(request: pytest.FixtureRequest, tmp_path: Path, built: tuple[Path, str], pg_url: str):  # noqa: F811
    lab = Lab(ns=f"rbv{secrets.token_hex(3)}", root=tmp_path / "lab")
    servers = Servers(lab, tmp_path, pg_url)
    servers.accel = built[1]
    servers.name = request.node.name.replace("test_", "")[:24]
    try:
        servers.create(image=built[0])
        yield servers
    finally:
        try:
            lab.teardown()
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for s in servers.srv:
                if s.log.exists():
                    shutil.copyfile(s.log, ARTIFACTS / f"{servers.name}-{s.name}.serve.log")


def _boot(two: Servers, api: int, on_stage=None) -> BootResult:
    r = boot_vm(two.lab, "bios", random_mac(), BOOT_TIMEOUT, echo=sys.stdout.buffer, api_base=two.srv[api].base, api_token=API_TOKEN,
                accel=two.accel, on_stage=on_stage)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = f"{two.name}-{r.mac.replace(':', '')}"
    shutil.copyfile(r.console_log, ARTIFACTS / f"{stem}.console.log")
    (ARTIFACTS / f"{stem}.timeline.txt").write_text(format_timeline(r) + "\n")
    return r


def _explain(r: BootResult, two: Servers) -> str:
    return f"{r.reason}; stopped after {r.stopped_at}\n{format_timeline(r)}\nlast console: {r.last_console}\n" \
           + two.logs()


def _wait_dead(two: Servers, survivor: int, dead: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = two.api(two.srv[survivor], "/api/v1/servers") or []
        if not any(s["name"] == dead and s["alive"] for s in v):
            return
        time.sleep(0.3)
    raise AssertionError(f"{two.srv[survivor].name} still thinks {dead} is alive")


def test_vm_boots_with_both_servers_up(two: Servers) -> None:
    two.start_all()
    r = _boot(two, 0)
    assert r.ok, _explain(r, two)
    console = r.console_log.read_text(errors="replace")
    urls = set(re.findall(r"ramboot\.url=(http://172\.22\.33\.\d+)/images/demo/rootfs\.squashfs", console))
    assert urls == {"http://172.22.33.2", "http://172.22.33.3"}, "the node should be told both servers"


def test_vm_boots_with_one_server_killed_before_it_starts(two: Servers) -> None:
    two.start_all()
    two.kill(0)
    _wait_dead(two, 1, "s1")
    r = _boot(two, 1)
    assert r.ok, _explain(r, two)
    console = r.console_log.read_text(errors="replace")
    assert "ramboot.url=http://172.22.33.2/" not in console, "a dead server must drop out of what nodes are told"
    acks = [e for e in r.marks if e.stage == "dhcp-ack"]
    assert acks and all(m.source == "server" for m in acks), _explain(r, two)


def test_vm_boots_when_its_server_dies_as_the_kernel_starts_the_initramfs(two: Servers) -> None:
    two.start_all()
    killed: list[str] = []
    console_path: list[Path] = []

    def on_stage(stage: str) -> None:
        if stage != "kernel-init" or killed:
            return
        text = next(iter(sorted((two.lab.root / "vms").glob("*/console.log")))).read_text(errors="replace")
        got = re.findall(r"http://(172\.22\.33\.\d+)/images/demo/vmlinuz", text)
        assert got, "iPXE printed no kernel URL"
        victim = next(s for s in two.srv if s.ip == got[-1])
        two.kill(victim.index)
        killed.append(victim.ip)

    r = _boot(two, 1, on_stage)
    console_path.append(r.console_log)
    assert killed, f"the kernel never started the initramfs\n{format_timeline(r)}"
    assert r.ok, _explain(r, two)
    console = r.console_log.read_text(errors="replace")
    survivor = next(s.ip for s in two.srv if s.ip != killed[0])
    assert re.search(rf"fetched the root image: \d+ bytes in [\d.]+ s from http://{re.escape(survivor)}/", console), \
        "the root image should have come from the surviving server"
    assert f"ramboot.url=http://{killed[0]}/" in console, "the dead server was named first: the node fell back"
