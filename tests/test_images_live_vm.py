"""Live media booted for real: blank QEMU VMs PXE-boot through `ramboot serve`, with the
kernel command line the server generates, into roots built from live media.

- A Fedora-style LiveOS squashfs (`LiveOS/rootfs.img`, an ext4 image made with
  `mkfs.ext4 -d`), built with `ramboot image build --rootfs squashfs:PATH`: the node
  must run on the inner ext4 image, read-only on a loop device, under the overlay.
- The same squashfs with `--kernel debian:generic`, whose ext4 (with jbd2, mbcache,
  crc16 and crc32c) is a module the initramfs must carry and load; the cloud
  kernel has ext4 built in.
- A Debian-Live-style ISO (xorriso, Rock Ridge and Joliet, `live/filesystem.squashfs`),
  built with `ramboot image build --rootfs iso:PATH`.

Both images are built once per run (shared by the xdist workers under a lock);
each boot has its own namespace and server (test_e2e_lab's LabRun), so the two run
side by side. Console logs and timelines go to test-artifacts/e2e/.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from pathlib import Path

import pytest

from live_media import debian_live_iso, liveos_squashfs
from ramboot.images.manifest import load_manifest
from ramboot.lab.netns import Lab
from ramboot.lab.server import ramboot_cmd
from ramboot.lab.vm import choose_accel, random_mac
from test_e2e_lab import ARTIFACTS, LabRun, _explain

pytestmark = [pytest.mark.vm, pytest.mark.netns]


@pytest.fixture(scope="session")
def live_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """DATA with images `liveos` and `isolive`, built through the CLI; and the accelerator."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "live-media"
    root.mkdir(exist_ok=True)
    data = root / "data"
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, make, scheme in (("liveos", liveos_squashfs, "squashfs"), ("isolive", debian_live_iso, "iso")):
            if (data / "images" / name / "image.toml").is_file():
                continue
            _build(data, name, f"{scheme}:{make(root / f'src-{name}')}")
        accel, _why = choose_accel(Lab(ns="unused", root=root), data / "images" / "liveos" / "vmlinuz")
    return data, accel


def _build(data: Path, name: str, rootfs: str, *args: str) -> None:
    p = subprocess.run([*ramboot_cmd(), "image", "build", name, "--rootfs", rootfs, *args, "--data-dir", str(data)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr


def _boot(name: str, tmp_path: Path, data: Path, accel: str) -> tuple[LabRun, object, str]:
    run = LabRun(f"live-{name}", tmp_path, data / "images" / name, accel)
    run.start()
    r = run.boot("bios", random_mac())
    console = r.console_log.read_text(errors="replace").replace("\r", "")
    booted = r.first("booted")
    if booted is not None:
        secs = booted.at - r.started
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"live-{name}.boot-seconds").write_text(f"{secs:.1f} ({r.accel})\n")
        print(f"{name}: blank VM to 'booted' in {secs:.1f} s ({r.accel})")
    return run, r, console


def test_liveos_squashfs_boots_from_its_inner_ext4_image(live_images: tuple[Path, str], tmp_path: Path) -> None:
    data, accel = live_images
    assert load_manifest(data, "liveos").root_image == "LiveOS/rootfs.img"
    run, r, console = _boot("liveos", tmp_path, data, accel)
    try:
        assert r.ok, _explain(r)
        assert re.search(r"^ramboot: the root is LiveOS/rootfs.img inside the squashfs, read-only on /dev/loop\d",
                         console, re.M), console[-3000:]
        assert "live-test: marker liveos\n" in console, console[-3000:]
        # the lower layer is the ext4 image, mounted read-only; the squashfs sits under it
        assert re.search(r"^live-test: mount /dev/loop\d+ /run/initramfs/ramboot/lower ext4 ro[, ]", console, re.M), console[-3000:]
        assert re.search(r"^live-test: mount /dev/loop\d+ /run/initramfs/ramboot/squashfs squashfs ro[, ]", console, re.M)
        sw = [e for e in run.events(r.mac) if e["stage"] == "switch-root"]
        assert sw and sw[0]["detail"].get("root_image") == "LiveOS/rootfs.img", sw
        assert "verified" in [e["stage"] for e in run.events(r.mac)]
    finally:
        run.close()


def test_liveos_squashfs_on_the_generic_kernel_loads_ext4(live_images: tuple[Path, str], tmp_path: Path) -> None:
    """ext4 is a module here: the initramfs carries it with its dependencies and loads it for the LiveOS image."""
    data, accel = live_images
    own = tmp_path / "data"
    _build(own, "liveos-generic", f"squashfs:{load_manifest(data, 'liveos').source.split(':', 1)[1]}",
           "--kernel", "debian:generic")
    run, r, console = _boot("liveos-generic", tmp_path, own, accel)
    try:
        assert r.ok, _explain(r)
        assert not load_manifest(own, "liveos-generic").kernel_version.endswith("cloud-amd64")
        assert re.search(r"^live-test: mount /dev/loop\d+ /run/initramfs/ramboot/lower ext4 ro[, ]", console, re.M), \
            console[-3000:]
        loaded = set(re.findall(r"^live-test: module (\S+)$", console, re.M))
        assert {"ext4", "jbd2", "mbcache", "crc16"} <= loaded, sorted(loaded)
        assert loaded & {"crc32c_generic", "crc32c_intel"}, sorted(loaded)
    finally:
        run.close()


def test_debian_live_iso_boots(live_images: tuple[Path, str], tmp_path: Path) -> None:
    data, accel = live_images
    m = load_manifest(data, "isolive")
    assert m.source_member == "live/filesystem.squashfs" and m.root_image == ""
    run, r, console = _boot("isolive", tmp_path, data, accel)
    try:
        assert r.ok, _explain(r)
        assert "live-test: marker debian-live\n" in console, console[-3000:]
        assert re.search(r"^live-test: mount /dev/loop\d+ /run/initramfs/ramboot/lower squashfs ro[, ]", console, re.M), \
            console[-3000:]
        assert "inside the squashfs" not in console
        assert "verified" in [e["stage"] for e in run.events(r.mac)]
    finally:
        run.close()
