"""The initramfs's less travelled paths, booted for real (QEMU/TCG, -kernel/-initrd, images_vm.BootNet):
choosing the BOOTIF NIC among several, the rescue shell, the `init=` override, and the 30 s stall
watchdog of the root download."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from images_vm import SERVER, BootNet, demo_image  # noqa: F401  (session fixture)
from test_images_vm import SERVER_URL, sha_of, stages, stages_until, webroot

pytestmark = pytest.mark.vm


def cmdline(net: BootNet, image: Path, *extra: str, rel: str = "demo/rootfs.squashfs") -> str:
    return " ".join([f"ramboot.url={net.url(rel)}", f"ramboot.sha256={sha_of(image)}",
                     f"ramboot.server={SERVER_URL}", *extra])


def console_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]


def type_until(vm, command: str, expect: str, timeout: float = 60) -> str:
    """Type a command on the console until its output shows up (the shell may not read yet)."""
    deadline = time.monotonic() + timeout
    while True:
        vm.type(command + "\n")
        try:
            return vm.wait_for(expect, min(10, max(1, deadline - time.monotonic())))
        except AssertionError:
            if time.monotonic() >= deadline:
                raise


# --- BOOTIF: the boot NIC among several ----------------------------------------------------

BOOT_MAC = "52:54:00:0b:00:03"
DECOYS = ("52:54:00:0b:00:01", "52:54:00:0b:00:02")


def test_bootif_picks_the_boot_nic_among_several(demo_image: Path, tmp_path: Path) -> None:
    """Two NICs come first (eth0, eth1), link up, nobody answering; BOOTIF (upper case, as some
    firmwares write it) names the third. Only that one is brought up for DHCP and reported from."""
    bootif = "BOOTIF=01-" + BOOT_MAC.replace(":", "-").upper()
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        vm = net.boot(demo_image, cmdline(net, demo_image, bootif), mac=BOOT_MAC, decoys=DECOYS)
        log = vm.wait_for(r"^ramboot: booted", 120, fail_on=r"^ramboot: FAILED")
        dhcp = [ln for ln in console_lines(log) if ln.startswith("ramboot: DHCP on ")]
        assert len(dhcp) == 1 and dhcp[0].endswith(f"({BOOT_MAC})"), dhcp
        assert not re.search(r"ramboot: DHCP on \S+ \((" + "|".join(DECOYS) + r")\)", log)
        posts = net.events()
        assert posts and all(e["path"].startswith(f"/api/v1/nodes/{BOOT_MAC}/") for e in posts), posts
        inv = next(e["body"] for e in posts if e["path"].endswith("/inventory"))
        nics = {n["mac"]: n["name"] for n in inv["nics"]}
        # the decoys were there (they came first), so the choice was real
        assert set(nics) == {*DECOYS, BOOT_MAC}, nics
        assert sorted(nics.values()).index(nics[BOOT_MAC]) == 2, nics
        assert stages_until(net, "booted")[-1] == "booted"


def test_bootif_naming_no_nic_fails_loudly(demo_image: Path, tmp_path: Path) -> None:
    """BOOTIF names a MAC no NIC has: no DHCP on the others, and a failure naming that MAC."""
    absent = "52:54:00:0b:00:99"
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        vm = net.boot(demo_image, cmdline(net, demo_image, "BOOTIF=01-" + absent.replace(":", "-")), mac=BOOT_MAC)
        log = vm.wait_for(r"^ramboot: FAILED no network interface with MAC " + absent, 120, fail_on=r"^ramboot: booted")
        assert "ramboot: DHCP on " not in log
        assert "loading every NIC driver in the initramfs" in log  # it looked harder before giving up


# --- the rescue shell, and init= -------------------------------------------------------------

def test_rescue_shell_on_failure_then_reboot(demo_image: Path, tmp_path: Path) -> None:
    """`ramboot.shell`: a failure (here, `init=` naming a program the root lacks) opens a shell on the
    console; the shell runs commands; leaving it reboots the node (QEMU -no-reboot exits)."""
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        vm = net.boot(demo_image, cmdline(net, demo_image, "init=/sbin/rbi-no-such-init", "ramboot.shell"),
                      interactive=True)
        log = vm.wait_for(r"^ramboot: rescue shell", 120, fail_on=r"^ramboot: booted")
        assert "ramboot: FAILED the root image has no /sbin/rbi-no-such-init" in log
        # the shell is the initramfs's: the downloaded root is mounted where init left it
        out = type_until(vm, "echo RESCUE-$((6*7)) $(ls /run/initramfs/ramboot/lower/sbin/init)", r"RESCUE-42 /run/initramfs/ramboot/lower/sbin/init")
        assert "stage switch-root" not in out
        vm.type("exit\n")
        deadline = time.monotonic() + 60
        while vm.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert vm.proc.poll() is not None, "leaving the rescue shell did not reboot the node:\n" + vm.text()[-2000:]
    failed = [e["body"]["detail"]["reason"] for e in net.events() if e["body"].get("stage") == "failed"]
    assert failed == ["the root image has no /sbin/rbi-no-such-init"], failed


def test_init_override_runs_that_program_as_pid_1(demo_image: Path, tmp_path: Path) -> None:
    """`init=/bin/sh`: switch_root hands over to /bin/sh, not /sbin/init (whose rcS says `booted`)."""
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        vm = net.boot(demo_image, cmdline(net, demo_image, "init=/bin/sh"), interactive=True)
        vm.wait_for(r"^ramboot: stage switch-root", 120, fail_on=r"^ramboot: FAILED")
        out = type_until(vm, "echo INIT-$((6*7)):$(tr '\\0' ' ' < /proc/1/cmdline):$(cat /proc/1/comm)",
                         r"INIT-42:/bin/sh :sh")
        assert "ramboot: booted" not in out  # /sbin/init never ran
        assert stages(net)[-1] == "switch-root"


# --- the 30 s stall watchdog ----------------------------------------------------------------

def test_a_stalled_download_is_abandoned_after_30_s_for_the_next_url(demo_image: Path, tmp_path: Path) -> None:
    """The first URL sends headers and 64 KiB, then nothing: the watchdog kills wget after 30 s with
    no data, and the node boots from the second URL."""
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        stall = net.url("stall/demo/rootfs.squashfs")
        good = net.url("demo/rootfs.squashfs")
        vm = net.boot(demo_image, f"ramboot.url={stall} ramboot.url={good} ramboot.sha256={sha_of(demo_image)} "
                                  f"ramboot.server={SERVER_URL}")
        log = vm.wait_for(r"^ramboot: booted", 240, fail_on=r"^ramboot: FAILED")
        # (wget's progress bar ends without a newline when it is killed: the message follows it on that line)
        assert f"ramboot: {stall}: no data for 30 s\n" in log.replace("\r", ""), log[-3000:]
        assert f"ramboot: download from {stall} failed" in console_lines(log)
        starts = [e["body"]["detail"]["url"] for e in net.events() if e["body"].get("stage") == "download-start"]
        assert starts == [stall, good], starts
        done = [e["body"]["detail"] for e in net.events() if e["body"].get("stage") == "download-done"]
        assert [d["url"] for d in done] == [good]
        # the server saw the client wait about 30 s after the last byte, then hang up
        waits = [e["body"]["stalled_seconds"] for e in net.events() if e["path"] == "/stall"]
        assert any(29 <= w <= 60 for w in waits), waits
