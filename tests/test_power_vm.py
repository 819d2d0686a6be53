"""Power and lifecycle against a real BMC emulator: a VM started and driven by OpenIPMI's
`ipmi_sim` (QEMU's ipmi-bmc-extern), booting from a real `ramboot serve` in the test's own
namespace. `ramboot power`, `node reprovision --wait` and `node boot-once` change the VM's
real state; the password of its BMC never comes back out."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ramboot.lab.bmc import start_ipmi_vm, wait_booted
from ramboot.lab.netns import adopted_pid
from ramboot.lab.server import link_image, ramboot_cmd
from ramboot.lab.vm import random_mac, unix_time
from test_e2e_lab import ARTIFACTS, LabRun, built, shared_dir  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.vm, pytest.mark.netns]


def _cli(run: LabRun, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ramboot ARGS --config` inside the lab's namespace, where the BMC listens."""
    return subprocess.run(["ip", "netns", "exec", run.lab.ns, *ramboot_cmd(), *args, "--config", str(run.config)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _booted_image(run: LabRun, mac: str, since: float) -> set[str]:
    """The images whose root the node fetched in its boots after `since`."""
    out = set()
    for e in run.events(mac):
        url = str(e["detail"].get("url") or "")
        if unix_time(e["at"]) >= since and e["stage"] == "download-done" and "/images/" in url:
            out.add(url.split("/images/")[1].split("/")[0])
    return out


def _keep(run: LabRun, vm) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for f in ("console.log", "ipmi_sim.log", "qemu.log"):
        if (vm.workdir / f).exists():
            shutil.copyfile(vm.workdir / f, ARTIFACTS / f"power-ipmi-{f}")


def _tools() -> None:
    for tool in ("ipmi_sim", "ipmitool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: make setup installs it (Debian openipmi, ipmitool)")


@pytest.mark.timeout(900)  # two TCG boots behind the BMC, on a busy machine a few minutes each
def test_ipmi_power_reprovision_and_console(request, tmp_path: Path, built) -> None:  # noqa: F811
    _tools()
    image, accel = built
    run = LabRun("power-ipmi", tmp_path, image, accel)
    request.addfinalizer(run.close)
    net = run.lab.server_ip.rsplit(".", 1)[0]
    run.start(dhcp=f'mode = "full"\nrange = "{net}.100-{net}.200"\n[console]\ncapture = true\nmax_kib = 64\n')
    link_image(image, run.lab.data_dir, "second")
    mac, dead = random_mac(), random_mac()
    t0 = time.time()
    vm = start_ipmi_vm(run.lab, mac, accel)
    request.addfinalizer(lambda: _keep(run, vm))
    password = vm.url.split(":")[2].split("@")[0]
    add = _cli(run, "node", "add", mac, "--image", "demo", "--hostname", "bmc-1", "--label", "rack=r9", "--bmc", vm.url)
    assert add.returncode == 0, add.stderr
    # A BMC nobody answers at: one line for it, and the real one goes on.
    assert _cli(run, "node", "add", dead, "--label", "rack=r9", "--bmc",
                f"ipmi://admin:x@{run.lab.server_ip}:9").returncode == 0
    ok, last = wait_booted(run.lab, mac, t0, 300, run.base)
    assert ok, f"first boot behind ipmi_sim: {last}"

    # The password is sealed: never printed, never in the API, never in the database file.
    shown = _cli(run, "node", "show", mac)
    assert "ipmi://admin:***@" in shown.stdout and password not in shown.stdout + add.stdout + add.stderr, shown.stdout
    assert password not in json.dumps(run.api(f"/api/v1/nodes/{mac}")) + json.dumps(run.api("/api/v1/nodes"))
    assert password.encode() not in b"".join(p.read_bytes() for p in run.lab.data_dir.glob("*.db*"))

    status = _cli(run, "power", "status", "--label", "rack=r9", "--timeout", "3")
    assert status.returncode == 1, status.stdout + status.stderr
    lines = dict(line.split(" ", 1) for line in status.stdout.splitlines())
    assert lines[mac] == "on" and lines[dead].startswith("unknown: ipmi"), status.stdout

    qemu = adopted_pid(vm.workdir / "qemu.pid")
    assert qemu is not None
    off = _cli(run, "power", "off", "bmc-1", "--json")
    assert off.returncode == 0 and json.loads(off.stdout)[0]["state"] == "off", off.stdout + off.stderr
    assert adopted_pid(vm.workdir / "qemu.pid") is None  # the VM is really gone
    assert _cli(run, "power", "status", mac).stdout.strip() == f"{mac} off"
    on = _cli(run, "power", "on", mac)
    assert on.returncode == 0 and (adopted_pid(vm.workdir / "qemu.pid") or qemu) != qemu, on.stdout + on.stderr
    assert _booted_image(run, mac, t0) == {"demo"}

    # Reprovision onto the second image: exit 0 only once it has booted it.
    t1 = time.monotonic()
    since = time.time()
    rep = _cli(run, "node", "reprovision", mac, "--image", "second", "--wait", "--timeout", "300", timeout=330)
    reprovision_s = time.monotonic() - t1
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert _booted_image(run, mac, since) == {"second"}, run.events(mac)[-12:]
    assert run.api(f"/api/v1/nodes/{mac}")["last_boot"]["events"][0]["stage"] == "power"

    # The console, captured over Serial-over-LAN: the kernel's lines in the file and in `node show`.
    log = run.lab.data_dir / "consoles" / f"{mac.replace(':', '-')}.log"
    text = b"".join(p.read_bytes() for p in (Path(f"{log}.1"), log) if p.exists())
    # Kernel lines (its timestamps), not one given line: after a power cycle the SOL session is
    # opened again, and on a loaded machine the kernel's first lines can come before it is.
    kernel_line = re.compile(r"\[\s*\d+\.\d{6}\] ")
    assert kernel_line.search(text.decode(errors="replace")) and log.stat().st_size <= 64 << 10, log
    lines = [c["line"] for c in run.api(f"/api/v1/nodes/{mac}")["last_boot"]["console"]]
    assert any(kernel_line.search(x) for x in lines) and "ramboot: booted" in lines, lines[:40]
    assert "ramboot: booted" in _cli(run, "node", "show", mac).stdout

    assert run.metric("ramboot_power_actions_total", action="off", result="ok") == 1
    assert run.metric("ramboot_power_actions_total", action="status", result="error") >= 1
    print(f"\nipmi: reprovision to booted {reprovision_s:.1f} s ({accel})")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "power-ipmi-figures.txt").write_text(f"reprovision_to_booted_s {reprovision_s:.1f} {accel}\n")


@pytest.mark.timeout(900)
def test_ipmi_boot_once_then_the_nodes_own_image(request, tmp_path: Path, built) -> None:  # noqa: F811
    """`node boot-once` set before the boot: that boot runs the other image and uses it up; the
    next power cycle boots the node's own image again."""
    _tools()
    image, accel = built
    run = LabRun("power-once", tmp_path, image, accel)
    request.addfinalizer(run.close)
    run.start()
    link_image(image, run.lab.data_dir, "second")
    mac = random_mac()
    assert _cli(run, "node", "add", mac, "--image", "second").returncode == 0
    once = _cli(run, "node", "boot-once", mac, "--image", "demo")
    assert once.returncode == 0 and run.api(f"/api/v1/nodes/{mac}")["boot_once"] == "demo", once.stderr
    since = time.time()
    vm = start_ipmi_vm(run.lab, mac, accel)
    assert _cli(run, "node", "add", mac, "--image", "second", "--bmc", vm.url, "--replace").returncode == 0
    ok, last = wait_booted(run.lab, mac, since, 300, run.base)
    assert ok and _booted_image(run, mac, since) == {"demo"}, last
    deadline = time.monotonic() + 10
    while run.api(f"/api/v1/nodes/{mac}")["boot_once"] is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.api(f"/api/v1/nodes/{mac}")["boot_once"] is None
    since = time.time()
    assert _cli(run, "power", "cycle", mac).returncode == 0
    ok, last = wait_booted(run.lab, mac, since, 300, run.base)
    assert ok and _booted_image(run, mac, since) == {"second"}, last


@pytest.mark.timeout(1200)  # three TCG boots
def test_redfish_and_libvirt_power_and_reprovision(request, tmp_path: Path, built) -> None:  # noqa: F811
    """A libvirt domain (TCG) in the test's own libvirtd, powered through sushy-emulator's Redfish
    and through the libvirt driver; each reprovisions the node and waits for `booted`."""
    from ramboot.lab.bmc import define_domain, start_libvirtd, start_sushy

    image, accel = built
    run = LabRun("power-rf", tmp_path, image, accel)
    request.addfinalizer(run.close)
    run.start()
    link_image(image, run.lab.data_dir, "second")
    daemon = start_libvirtd(run.lab, tmp_path / "libvirt")
    mac = random_mac()
    domain, console = define_domain(run.lab, daemon, mac, accel)
    request.addfinalizer(lambda: console.exists() and shutil.copyfile(console, ARTIFACTS / "power-rf-console.log"))
    base = start_sushy(run.lab, daemon, tmp_path / "sushy")

    def domstate() -> str:
        return subprocess.run(["ip", "netns", "exec", run.lab.ns, "virsh", "-c", daemon.uri, "domstate", domain],
                              capture_output=True, text=True, timeout=30).stdout.strip()

    assert _cli(run, "node", "add", mac, "--image", "demo", "--bmc", base + "?verify=false").returncode == 0
    assert _cli(run, "power", "status", mac).stdout.strip() == f"{mac} off" and domstate() == "shut off"
    since = time.time()
    on = _cli(run, "power", "on", mac)
    assert on.returncode == 0 and domstate() == "running", on.stdout + on.stderr
    ok, last = wait_booted(run.lab, mac, since, 300, run.base)
    assert ok and _booted_image(run, mac, since) == {"demo"}, last
    figures = {}
    for driver, bmc, target in (("redfish", base + "?verify=false", "second"),
                                ("libvirt", f"libvirt:{domain}?uri={daemon.uri}", "demo")):
        assert _cli(run, "node", "add", mac, "--image", "demo" if target == "second" else "second",
                    "--bmc", bmc, "--replace").returncode == 0
        assert _cli(run, "power", "status", mac).stdout.strip() == f"{mac} on"
        t1, since = time.monotonic(), time.time()
        rep = _cli(run, "node", "reprovision", mac, "--image", target, "--wait", "--timeout", "300", timeout=330)
        figures[driver] = time.monotonic() - t1
        assert rep.returncode == 0, rep.stdout + rep.stderr
        assert _booted_image(run, mac, since) == {target}, run.events(mac)[-12:]
    off = _cli(run, "power", "off", mac)
    assert off.returncode == 0 and domstate() == "shut off", off.stdout + off.stderr
    assert run.metric("ramboot_power_actions_total", action="cycle", result="ok") == 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "power-rf-figures.txt").write_text(
        "".join(f"reprovision_to_booted_s {d} {s:.1f} {accel}\n" for d, s in figures.items()))
    print("\n" + ", ".join(f"{d}: reprovision to booted {s:.1f} s" for d, s in figures.items()))
