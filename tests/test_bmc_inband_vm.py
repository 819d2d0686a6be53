"""BMC discovery in band on a real machine: a VM on Debian's generic kernel (the cloud kernel has
no IPMI driver) behind OpenIPMI's `ipmi_sim` (QEMU's ipmi-bmc-extern on a KCS interface, which
QEMU names in SMBIOS type 38 and ACPI), PXE-booted through `ramboot serve`. Its initramfs reads
the BMC with `ipmitool lan print` over KCS; the inventory's `bmc` is the emulator's own LAN
address and MAC, and `ipmi://USER:PASS@auto:PORT` powers the node through that address."""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ramboot.images.kernel import cache_dir
from ramboot.lab.bmc import start_ipmi_vm, wait_booted
from ramboot.lab.netns import Lab
from ramboot.lab.server import ramboot_cmd
from ramboot.lab.vm import choose_accel, random_mac
from test_e2e_lab import ARTIFACTS, LabRun
from test_node_modules_vm import image_code_key

pytestmark = [pytest.mark.vm, pytest.mark.netns]

# bmc.sh's console line: how long the read took, and how much of it the boot waited for.
READ_LINE = re.compile(r"ramboot: BMC read in band in (\d+\.\d+) s, waited (\d+\.\d+) s: (.*)")


@pytest.fixture(scope="session")
def generic_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The built-in root on `--kernel debian:generic` (ipmi_si, ipmi_devintf, ipmitool); cached
    across runs, keyed by ramboot's image code (the build takes minutes on a busy machine)."""
    root = cache_dir() / "test-images"
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"bmc-generic-{image_code_key('debian:generic')}"
    img = data / "images" / "demo"
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (img / "image.toml").is_file():
            for old in root.glob("bmc-generic-*"):
                shutil.rmtree(old)  # an older build of ramboot's image code
            p = subprocess.run([*ramboot_cmd(), "image", "build", "demo", "--kernel", "debian:generic",
                                "--data-dir", str(data)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
            assert p.returncode == 0, p.stderr[-3000:]
        accel, _why = choose_accel(Lab(ns="unused", root=tmp_path_factory.mktemp("accel")), img / "vmlinuz")
    return img, accel


def _cli(run: LabRun, *args: str) -> subprocess.CompletedProcess:
    """`ramboot ARGS --config` inside the lab's namespace, where the BMC listens."""
    return subprocess.run(["ip", "netns", "exec", run.lab.ns, *ramboot_cmd(), *args, "--config", str(run.config)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(900)  # a TCG boot of the generic kernel behind the BMC, on a busy machine
def test_bmc_address_reported_in_band_is_the_emulators(request, tmp_path: Path, generic_image) -> None:
    for tool in ("ipmi_sim", "ipmitool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: make setup installs it (Debian openipmi, ipmitool)")
    image, accel = generic_image
    run = LabRun("bmc-inband", tmp_path, image, accel)
    request.addfinalizer(run.close)
    run.start()
    mac = random_mac()
    since = time.time()
    vm = start_ipmi_vm(run.lab, mac, accel)

    def keep() -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for f in ("console.log", "ipmi_sim.log", "qemu.log"):
            if (vm.workdir / f).exists():
                shutil.copyfile(vm.workdir / f, ARTIFACTS / f"bmc-inband-{f}")

    request.addfinalizer(keep)
    port = vm.url.rsplit(":", 1)[1]
    password = vm.url.split(":")[2].split("@")[0]
    auto = f"ipmi://admin:{password}@auto:{port}"
    add = _cli(run, "node", "add", mac, "--image", "demo", "--bmc", auto)
    assert add.returncode == 0, add.stderr
    before = _cli(run, "power", "status", mac)  # no report yet: one clear line, not a guess
    assert before.returncode != 0 and "not reported one yet" in before.stdout + before.stderr, before

    ok, last = wait_booted(run.lab, mac, since, 600, run.base)
    console = vm.console_log.read_text(errors="replace").replace("\r", "")
    assert ok, f"boot behind ipmi_sim on the generic kernel: {last}\n{console[-4000:]}"
    bmc = run.api(f"/api/v1/nodes/{mac}")["inventory"]["report"]["bmc"]
    assert bmc is not None, console[-4000:]
    assert (bmc["ip"], bmc["mac"], bmc["ip_source"]) == (vm.bmc_ip, vm.bmc_mac, "static"), bmc
    assert bmc["netmask"] == "255.255.255.0" and bmc["gateway"] is None, bmc
    m = READ_LINE.search(console)
    assert m and f"ip:{vm.bmc_ip}" in m[3] and f"mac:{vm.bmc_mac}" in m[3], console[-4000:]
    shown = _cli(run, "node", "show", mac).stdout
    assert vm.bmc_ip in shown and vm.bmc_mac in shown, shown
    # `@auto` resolves to the address the node reported: the power command reaches the emulator.
    status = _cli(run, "power", "status", mac)
    assert status.returncode == 0 and status.stdout.strip() == f"{mac} on", status.stdout + status.stderr
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bmc-inband-figures.txt").write_text(f"bmc_read_s {m[1]} waited_s {m[2]} {accel}\n")
    print(f"\nBMC read in band in {m[1]} s, the boot waited {m[2]} s ({accel})")
