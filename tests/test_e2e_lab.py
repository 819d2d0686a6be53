"""End to end: blank QEMU VMs (TCG) PXE-boot from a real `ramboot serve` into their RAM root.

Each test has its own network namespace (never the user's `ramboot-lab`), its
own data dir and server, so the tests run in parallel under xdist. The image is
built once per run and hard-linked into each data dir. Console logs, server
logs and timelines go to test-artifacts/e2e/.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ramboot.lab.netns import Lab
from ramboot.lab.server import build_image, link_image, ramboot_cmd, start_server, lab_config_text
from ramboot.lab.vm import BootResult, boot_vm, choose_accel, format_timeline, random_mac

pytestmark = [
    pytest.mark.vm,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "e2e"
BOOT_TIMEOUT = 300.0


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory all xdist workers of this run share (the parent of their basetemps)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    d = root / "e2e-shared"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def built(shared_dir: Path) -> tuple[Path, str]:
    """The built-in image, built once per run, and the accelerator to use (probed once)."""
    with open(shared_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        img = shared_dir / "data" / "images" / "demo"
        if not (img / "image.toml").is_file():
            build_image(shared_dir / "data", "demo", log=shared_dir / "build.log", echo=False)
        accel, _why = choose_accel(Lab(ns="unused", root=shared_dir), img / "vmlinuz")
    return img, accel


class LabRun:
    """One test's lab: namespace, data dir, server; boots VMs and keeps their artifacts."""

    def __init__(self, name: str, root: Path, image: Path, accel: str):
        self.name = name
        self.lab = Lab(ns=f"rbe-{os.getpid()}-{name}"[:40], root=root)
        self.image = image
        self.accel = accel
        self.config = root / "ramboot.toml"
        self.base = ""

    def start(self, boot: dict[str, str] | None = None, dhcp: str | None = None, copy_image: bool = False) -> None:
        self.lab.create()
        link_image(self.image, self.lab.data_dir, "demo", copy=copy_image)
        self.config.write_text(lab_config_text(self.lab, self.lab.data_dir, dhcp=dhcp, boot=boot))
        self.base = start_server(self.lab, self.config, self.lab.log_file)

    def node_add(self, mac: str, *args: str) -> None:
        subprocess.run([*ramboot_cmd(), "node", "add", mac, "--image", "demo", *args, "--config", str(self.config)],
                       check=True, capture_output=True, text=True)

    def boot(self, firmware: str = "bios", mac: str | None = None, timeout: float = BOOT_TIMEOUT,
             echo: bool = True, uuid: str | None = None, secure_boot: bool = False,
             stop_on: tuple[str, ...] = ()) -> BootResult:
        result = boot_vm(self.lab, firmware, mac or random_mac(), timeout,
                         echo=sys.stdout.buffer if echo else None, api_base=self.base, accel=self.accel, uuid=uuid,
                         secure_boot=secure_boot, stop_on=stop_on)
        self.keep(result)
        return result

    def keep(self, r: BootResult) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = f"{self.name}-{r.firmware}-{r.mac.replace(':', '')}"
        shutil.copyfile(r.console_log, ARTIFACTS / f"{stem}.console.log")
        (ARTIFACTS / f"{stem}.timeline.txt").write_text(format_timeline(r) + "\n")

    def api(self, path: str):
        return self.lab.api(path, self.base)

    def events(self, mac: str) -> list[dict]:
        return self.api(f"/api/v1/nodes/{mac}/events") or []

    def close(self) -> None:
        try:
            self.lab.teardown()
        finally:
            if self.lab.log_file.exists():
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.lab.log_file, ARTIFACTS / f"{self.name}.serve.log")


@pytest.fixture
def lab_run(request: pytest.FixtureRequest, tmp_path: Path, built: tuple[Path, str]):
    run = LabRun(request.node.name.replace("test_", "")[:20], tmp_path, *built)
    yield run
    run.close()


def _explain(r: BootResult) -> str:
    return f"{r.reason}; stopped after {r.stopped_at}\n{format_timeline(r)}\nlast console: {r.last_console}"


def _stages(events: list[dict]) -> list[str]:
    return [e["stage"] for e in events]


def test_bios_full_dhcp_reaches_ram_root_with_inventory(lab_run: LabRun) -> None:
    lab_run.start()
    mac = random_mac()
    lab_run.node_add(mac, "--hostname", "e2e-bios")
    r = lab_run.boot("bios", mac)
    assert r.ok, _explain(r)
    assert r.first("verified") and r.first("switch-root"), _explain(r)
    node = lab_run.api(f"/api/v1/nodes/{mac}")
    deadline = time.monotonic() + 10
    while not (node or {}).get("inventory") and time.monotonic() < deadline:
        time.sleep(0.5)
        node = lab_run.api(f"/api/v1/nodes/{mac}")
    assert node and node["last_boot"]["stage"] == "booted", json.dumps(node)[:2000]
    report = node["inventory"]["report"]
    assert mac in [n["mac"] for n in report["nics"]], report
    assert report["memory_kib"] > 500_000 and report["cpu"]["count"] >= 1, report


def test_uefi_own_pxe_reaches_ram_root(lab_run: LabRun) -> None:
    lab_run.start()
    r = lab_run.boot("uefi")
    assert r.ok, _explain(r)
    loaders = [e["detail"].get("file") for e in lab_run.events(r.mac) if e["stage"] == "loader"]
    assert any(str(f).endswith(".efi") for f in loaders), loaders
    acks = [e["detail"] for e in lab_run.events(r.mac) if e["stage"] == "dhcp-ack"]
    assert any(a.get("firmware") == "uefi" for a in acks), acks


def test_classic_pxelinux_path(lab_run: LabRun) -> None:
    lab_run.start()
    mac = random_mac()
    lab_run.node_add(mac, "--loader", "pxelinux")
    r = lab_run.boot("bios", mac)
    assert r.ok, _explain(r)
    ev = lab_run.events(mac)
    # TFTP events carry no protocol (or "tftp"); HTTP ones say "http".
    served = {(e["stage"], e["detail"].get("file"), e["detail"].get("protocol") or "tftp") for e in ev}
    assert ("loader", "pxelinux.0", "tftp") in served, ev
    assert ("script", f"pxelinux.cfg/01-{mac.replace(':', '-')}", "tftp") in served, ev
    assert ("kernel", "images/demo/vmlinuz", "tftp") in served and ("initrd", "images/demo/initrd.img", "tftp") in served, ev
    console = r.console_log.read_text(errors="replace")
    assert "root=live:http://" in console, "the kernel command line should use the dracut live form"


def test_proxy_mode_beside_site_dhcp(lab_run: LabRun, tmp_path: Path) -> None:
    """dnsmasq is the site's DHCP server (addresses only); ramboot adds the PXE answers."""
    site = f"{lab_run.lab.ns}-site"[:40]
    lab_run.lab.create()
    lab_run.lab.add_peer(site, "172.22.33.1/24")
    leases = tmp_path / "site.leases"
    lab_run.lab.spawn("site-dhcp", [
        "dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces", "--no-ping",
        "--dhcp-range=172.22.33.50,172.22.33.90,1h", f"--dhcp-leasefile={leases}", "--log-dhcp",
    ], log=tmp_path / "site-dnsmasq.log", netns=site)
    lab_run.start(dhcp='mode = "proxy"\n')
    r = lab_run.boot("bios")
    assert r.ok, _explain(r)
    assert r.mac in leases.read_text(), "the VM's address should come from the site DHCP server"
    stages = _stages(lab_run.events(r.mac))
    assert "proxy-offer" in stages and "dhcp-ack" not in stages, stages


def test_unknown_nodes_ignore(lab_run: LabRun) -> None:
    lab_run.start(boot={"unknown_nodes": "ignore"})
    known, unknown = random_mac(), random_mac()
    lab_run.node_add(known)
    with ThreadPoolExecutor(2) as pool:
        f_unknown = pool.submit(lab_run.boot, "bios", unknown, 60.0, False)
        f_known = pool.submit(lab_run.boot, "bios", known, BOOT_TIMEOUT, False)
        r_known, r_unknown = f_known.result(), f_unknown.result()
    assert r_known.ok, _explain(r_known)
    assert not r_unknown.ok
    served = {"loader", "script", "kernel", "initrd", "rootfs", "booted"}
    assert not served & set(_stages(lab_run.events(unknown))), lab_run.events(unknown)


def test_node_registered_by_uuid_boots_with_a_new_nic(lab_run: LabRun) -> None:
    """Registered by UUID with one MAC, booted with another NIC and that UUID (QEMU `-uuid`):
    with `unknown_nodes = "ignore"` only the UUID can make it boot, through DHCP (option 97)
    and then the script request, which finds the same node by the name it was handed."""
    lab_run.start(boot={"unknown_nodes": "ignore"})
    uuid = str(uuidlib.uuid4())
    registered, new_nic = random_mac(), random_mac()
    lab_run.node_add(registered, "--uuid", uuid, "--hostname", "by-uuid")
    r = lab_run.boot("bios", new_nic, uuid=uuid)
    assert r.ok, _explain(r)
    scripts = [e["detail"]["file"] for e in lab_run.events(new_nic) if e["stage"] == "script"]
    assert scripts == [f"boot/{new_nic.replace(':', '-')}/{uuid}.ipxe"], lab_run.events(new_nic)
    console = r.console_log.read_text(errors="replace")
    assert "ramboot.hostname=by-uuid" in console, "the node's own settings should reach the kernel command line"


def test_corrupted_root_image_refused_loudly(lab_run: LabRun) -> None:
    lab_run.start(copy_image=True)
    rootfs = lab_run.lab.data_dir / "images" / "demo" / "rootfs.squashfs"
    with open(rootfs, "r+b") as f:  # same size, different bytes: only the sha256 can tell
        f.seek(rootfs.stat().st_size // 2)
        chunk = f.read(64)
        f.seek(-len(chunk), 1)
        f.write(bytes(b ^ 0xFF for b in chunk))
    r = lab_run.boot("bios")
    assert not r.ok and r.first("failed"), _explain(r)
    assert "ramboot: FAILED" in r.console_log.read_text(errors="replace")
    deadline = time.monotonic() + 10
    while "failed" not in _stages(lab_run.events(r.mac)) and time.monotonic() < deadline:
        time.sleep(0.5)
    failed = [e for e in lab_run.events(r.mac) if e["stage"] == "failed"]
    assert failed and failed[0]["source"] == "node", lab_run.events(r.mac)
    assert "sha256" in json.dumps(failed[0]["detail"]).lower(), failed
