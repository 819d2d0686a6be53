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
import re
import shutil
import subprocess
import sys
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ramboot.lab.impair import Impairment
from ramboot.lab.netns import Lab
from ramboot.lab.server import build_image, lab_config_text, link_image, ramboot_cmd, start_server
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

    def start_proxy_beside_site_dhcp(self, work: Path) -> Path:
        """dnsmasq in a peer namespace is the site's DHCP server (addresses only); ramboot serves in
        proxy mode beside it. Returns dnsmasq's lease file."""
        site = f"{self.lab.ns}-site"[:40]
        self.lab.create()
        self.lab.add_peer(site, "172.22.33.1/24")
        leases = work / "site.leases"
        self.lab.spawn("site-dhcp", [
            "dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces", "--no-ping",
            "--dhcp-range=172.22.33.50,172.22.33.90,1h", f"--dhcp-leasefile={leases}", "--log-dhcp",
        ], log=work / "site-dnsmasq.log", netns=site)
        self.start(dhcp='mode = "proxy"\n')
        return leases

    def node_add(self, mac: str, *args: str) -> None:
        subprocess.run([*ramboot_cmd(), "node", "add", mac, "--image", "demo", *args, "--config", str(self.config)],
                       check=True, capture_output=True, text=True)

    def boot(self, firmware: str = "bios", mac: str | None = None, timeout: float = BOOT_TIMEOUT,
             echo: bool = True, uuid: str | None = None, on_booted=None, memory_mb: int = 1024,
             secure_boot: bool = False, stop_on: tuple[str, ...] = (), impair: Impairment | None = None) -> BootResult:
        result = boot_vm(self.lab, firmware, mac or random_mac(), timeout,
                         echo=sys.stdout.buffer if echo else None, api_base=self.base, accel=self.accel, uuid=uuid,
                         on_booted=on_booted, memory_mb=memory_mb, secure_boot=secure_boot, stop_on=stop_on,
                         impair=impair)
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
        """The node's events; a failed API call fails the test (never an empty list that proves nothing)."""
        status, body = self.lab.http(f"{self.base}/api/v1/nodes/{mac}/events")
        assert status == 200, f"GET /api/v1/nodes/{mac}/events: HTTP {status or 'unreachable'} {body[:300]!r}"
        events = json.loads(body)
        assert isinstance(events, list), events
        return events

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the server's /metrics (labels in any order), 0 when absent; a failed scrape fails the test."""
        status, body = self.lab.http(f"{self.base}/metrics")
        assert status == 200, f"GET /metrics: HTTP {status or 'unreachable'}"
        for line in body.decode().splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
            if m and m[1] == name and dict(re.findall(r'(\w+)="([^"]*)"', m[2] or "")) == labels:
                return float(m[3])
        return 0.0

    def capture(self, path: Path) -> None:
        """tcpdump of the lab bridge's DHCP traffic, started in the lab namespace (stopped by teardown)."""
        log = path.with_suffix(".log")
        self.lab.spawn("capture", ["tcpdump", "-i", self.lab.bridge, "-U", "--immediate-mode", "-n", "-w", str(path),
                                   "udp port 67 or udp port 68"], log=log)
        deadline = time.monotonic() + 10
        while "listening on" not in (log.read_text(errors="replace") if log.exists() else ""):
            assert time.monotonic() < deadline and self.lab.alive("capture"), f"tcpdump did not start: {log.read_text()}"
            time.sleep(0.1)

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
    leases = lab_run.start_proxy_beside_site_dhcp(tmp_path)
    r = lab_run.boot("bios")
    assert r.ok, _explain(r)
    assert r.mac in leases.read_text(), "the VM's address should come from the site DHCP server"
    stages = _stages(lab_run.events(r.mac))
    assert "proxy-offer" in stages and "dhcp-ack" not in stages, stages


def _dhcp_on_the_wire(pcap: Path) -> list:
    """Every DHCP packet captured (client requests and server replies), decoded."""
    from dhcp_netns import udp_payloads
    from ramboot.proto.dhcp_codec import decode

    return [decode(p) for sport, dport, p in udp_payloads(pcap.read_bytes()) if {sport, dport} & {67, 68}]


IGNORED_DISCOVERS = ("ramboot_dhcp_packets_total", {"type": "discover", "outcome": "ignored"})


def test_unknown_nodes_ignore(lab_run: LabRun, tmp_path: Path) -> None:
    """An unknown MAC is ignored: it asks, the server counts its DISCOVERs as ignored and answers none of them."""
    from ramboot.proto.dhcp_codec import BOOTREPLY, BOOTREQUEST, MsgType

    lab_run.start(boot={"unknown_nodes": "ignore"})
    known, unknown = random_mac(), random_mac()
    lab_run.node_add(known)
    pcap = tmp_path / "dhcp.pcap"
    lab_run.capture(pcap)
    ignored0 = lab_run.metric(IGNORED_DISCOVERS[0], **IGNORED_DISCOVERS[1])
    with ThreadPoolExecutor(2) as pool:
        # 40 s is enough for iPXE's whole DHCP attempt, and much less than the known node's boot
        f_unknown = pool.submit(lab_run.boot, "bios", unknown, 40.0, False)
        f_known = pool.submit(lab_run.boot, "bios", known, BOOT_TIMEOUT, False)
        r_known, r_unknown = f_known.result(), f_unknown.result()
    assert r_known.ok, _explain(r_known)
    ignored = lab_run.metric(IGNORED_DISCOVERS[0], **IGNORED_DISCOVERS[1]) - ignored0
    lab_run.lab.stop("capture")
    wire = _dhcp_on_the_wire(pcap)
    asked = [p for p in wire if p.op == BOOTREQUEST and p.mac == unknown and p.msg_type == MsgType.DISCOVER]
    answered = [p for p in wire if p.op == BOOTREPLY and p.mac == unknown]
    # positive signs that the unknown node was handled, not merely slow:
    assert r_unknown.first("ipxe-dhcp"), _explain(r_unknown)  # its firmware really asked...
    assert len(asked) >= 2, f"{len(asked)} DISCOVERs from {unknown} on the wire"  # ...and asked again
    assert ignored == len(asked), f"{ignored} DISCOVERs counted as ignored, {len(asked)} sent by {unknown}"
    assert answered == [], answered
    assert [p for p in wire if p.op == BOOTREPLY and p.mac == known], "the capture saw no reply at all"
    assert not r_unknown.ok and r_unknown.reason.startswith("timed out"), _explain(r_unknown)
    assert not r_unknown.first("script") and not r_unknown.first("kernel-start"), _explain(r_unknown)
    served = {"dhcp-offer", "dhcp-ack", "loader", "script", "kernel", "initrd", "rootfs", "booted"}
    assert not served & set(_stages(lab_run.events(unknown))), lab_run.events(unknown)
    assert "dhcp-ack" in _stages(lab_run.events(known))  # the same query does find the known node's events


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


def test_lab_cli_up_vm_down(tmp_path: Path) -> None:
    """`ramboot lab up` (building the image), `lab vm`, `lab down`, as a user runs them, in a namespace
    of their own ($RAMBOOT_LAB_NS, $RAMBOOT_LAB_DIR): the user's `ramboot-lab`, if any, is never touched."""
    ns = f"rbl-{os.getpid()}"
    root = tmp_path / "lab"
    env = {**os.environ, "RAMBOOT_LAB_NS": ns, "RAMBOOT_LAB_DIR": str(root)}
    user_lab = Path("/run/netns/ramboot-lab").exists()

    def lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:  # `up` builds an image: minutes on a loaded machine
        return subprocess.run([*ramboot_cmd(), "lab", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    the_lab = Lab(ns=ns, root=root)
    try:
        r = lab("vm", "--timeout", "5")
        assert r.returncode == 1 and "the lab is not up; run: ramboot lab up" in r.stderr, r
        r = lab("up")
        assert r.returncode == 0, r.stderr
        assert f"namespace {ns}, bridge rb0, server http://172.22.33.2" in r.stdout, r.stdout
        assert "building the built-in image 'demo'" in r.stdout  # the lab's data dir had no image
        assert (root / "data" / "images" / "demo" / "image.toml").is_file()
        assert Path(f"/run/netns/{ns}").exists() and the_lab.alive("server")
        status, body = the_lab.http("http://172.22.33.2/api/v1/nodes")
        assert status == 200 and json.loads(body) == [], (status, body)
        server_pid = the_lab.state()["pids"]["server"][0]
        r = lab("up")  # again: the same lab, the same server, the image kept
        assert r.returncode == 0 and the_lab.state()["pids"]["server"][0] == server_pid, r.stderr
        assert "building" not in r.stdout, r.stdout
        mac = random_mac()
        r = lab("vm", "--firmware", "bios", "--mac", mac, "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 60)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "lab-cli-vm.stdout.log").write_text(r.stdout[-200_000:] + "\n--- stderr\n" + r.stderr)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "ramboot: booted" in r.stdout, r.stdout[-2000:]  # the console, echoed live
        stages = _stages(json.loads(the_lab.http(f"http://172.22.33.2/api/v1/nodes/{mac}/events")[1]))
        assert "dhcp-ack" in stages and stages[-1] == "booted", stages
        r = lab("down")
        assert r.returncode == 0 and f"namespace {ns}" in r.stdout and f"pid {server_pid}" in r.stdout, r.stdout
        assert not Path(f"/run/netns/{ns}").exists() and not the_lab.state_file.exists()
        r = lab("down")
        assert r.returncode == 0 and "nothing to remove" in r.stdout, r.stdout
        r = lab("vm", "--timeout", "5")
        assert r.returncode == 1 and "the lab is not up" in r.stderr
    finally:
        the_lab.teardown()
        if (root / "serve.log").exists():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "serve.log", ARTIFACTS / "lab-cli.serve.log")
    assert Path("/run/netns/ramboot-lab").exists() == user_lab  # the user's lab is as it was


# -- loss and delay (issue 13) -------------------------------------------------------
# Every frame between the VM and the bridge crosses ramboot.lab.impair: 5 % dropped and
# 20 ms held, each way (netem's `loss 5% delay 20ms`; this kernel has no sch_netem, see
# docs/decisions.md "Loss and delay"). The whole chain runs through it: the firmware's
# DHCP and TFTP (OVMF) or iPXE's DHCP (SeaBIOS + iPXE ROM), the script, kernel and
# initrd over HTTP, the initramfs's DHCP, the root image and the reports.
NETEM_TIMEOUT = 480.0


def _netem_boot(lab_run: LabRun, firmware: str) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    imp = Impairment(loss=0.05, delay=0.020, seed=seed)
    lab_run.start()
    r = lab_run.boot(firmware, timeout=NETEM_TIMEOUT, impair=imp)
    wire = r.wire.get("directions", {})
    note = f"seed {seed}; wire {json.dumps(wire)}"
    assert r.ok, f"{_explain(r)}\n{note}"
    # the impairment really was on the path: both ways carried the boot and lost frames
    assert len(wire) == 2, note
    for d in wire.values():
        assert d["frames"] > 500 and 0.02 < d["lost"] / d["frames"] < 0.09, note
    times = ARTIFACTS / f"netem-{firmware}.json"
    times.write_text(json.dumps({
        "firmware": firmware, "accel": r.accel,
        "seconds": round((r.first("booted").at if r.first("booted") else r.ended) - r.started, 1),
        "impairment": imp.describe(),
        "seed": seed, "wire": wire, "retries_on_console": r.console_log.read_text(errors="replace").count(
            "download failed, trying again"),
        "marks": [(round(m.at - r.started, 1), m.stage) for m in r.marks],
    }, indent=1))
    print(f"netem boot ({firmware}, {r.accel}): {r.seconds:.1f} s; {note}")


@pytest.mark.timeout(720)
def test_bios_boots_through_loss_and_delay(lab_run: LabRun) -> None:
    _netem_boot(lab_run, "bios")


@pytest.mark.timeout(720)
def test_uefi_boots_through_loss_and_delay(lab_run: LabRun) -> None:
    _netem_boot(lab_run, "uefi")


def test_ipxe_script_retries_the_kernel_then_fails_loudly(lab_run: LabRun) -> None:
    """The generated script's retry, run by the real iPXE ROM: the kernel answers 404 every time,
    iPXE fetches it IPXE_FETCH_TRIES times (the server saw each), then says FAILED on the console."""
    from ramboot.render import IPXE_FETCH_TRIES

    lab_run.start()
    kernel = lab_run.lab.data_dir / "images" / "demo" / "vmlinuz"
    kernel.rename(kernel.with_name("vmlinuz.away"))  # this lab's own hard link; the shared build keeps its own
    r = lab_run.boot("bios", timeout=180)
    console = r.console_log.read_text(errors="replace")
    assert not r.ok and r.first("failed"), _explain(r)
    assert r.first("failed").detail["reason"] == (
        f"the kernel and initrd could not be fetched in {IPXE_FETCH_TRIES} tries"), _explain(r)
    assert console.count("download failed, trying again") == IPXE_FETCH_TRIES - 1, console[-3000:]
    # the server answered each of the tries with a 404 (and nothing else was missing)
    assert lab_run.metric("ramboot_dropped_total", protocol="http", reason="not-found") == IPXE_FETCH_TRIES
