"""The ramboot initramfs booted for real: QEMU/TCG with -kernel/-initrd on a private
namespace network (dnsmasq DHCP, a throwaway HTTP server that records what the node
posts). Each boot is one test, so xdist runs them side by side."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from images_vm import SERVER, BootNet, demo_image  # noqa: F401  (session fixture)
from ramboot.images.manifest import ROOTFS, load_manifest

pytestmark = pytest.mark.vm
SERVER_URL = f"http://{SERVER}:8080"


def sha_of(image_dir: Path) -> str:
    return load_manifest(image_dir.parent.parent, image_dir.name).files[ROOTFS].sha256


def webroot(tmp_path: Path, image_dir: Path) -> Path:
    w = tmp_path / "www"
    w.mkdir()
    os.symlink(image_dir, w / "demo")
    return w


def stages(net: BootNet) -> list[str]:
    return [e["body"]["stage"] for e in net.events() if e["path"].endswith("/events")]


def stages_until(net: BootNet, last: str, seconds: float = 15.0) -> list[str]:
    """The reported stages once `last` has arrived (or the deadline passed): the console says
    `ramboot: booted` a moment before the root's POST of it reaches the server."""
    deadline = time.monotonic() + seconds
    while (got := stages(net)) and got[-1] != last and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def test_boots_into_the_ram_root_and_reports(demo_image: Path, tmp_path: Path) -> None:
    mac = "52:54:00:0a:00:01"
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        vm = net.boot(demo_image, f"ramboot.url={net.url('demo/rootfs.squashfs')} ramboot.sha256={sha_of(demo_image)} "
                                  f"ramboot.server={SERVER_URL} BOOTIF=01-{mac.replace(':', '-')} "
                                  "ramboot.hostname=node1", mac=mac)
        log = vm.wait_for(r"^ramboot: booted", 90, fail_on=r"^ramboot: FAILED")
        for s in ("initramfs", "download-start", "download-done", "verified", "switch-root"):
            assert f"ramboot: stage {s}\n" in log.replace("\r", ""), s
        vm.wait_for(r"^node1:/# ", 30)  # the console shell, with the hostname from the command line
        assert stages(net) == ["initramfs", "download-start", "download-done", "verified", "switch-root",
                               "booted"]
        posts = net.events()
        assert all(e["path"].startswith(f"/api/v1/nodes/{mac}/") for e in posts)
        inv = next(e["body"] for e in posts if e["path"].endswith("/inventory"))
        assert inv["cpu"]["count"] == 1 and inv["memory_kib"] > 300_000
        assert inv["nics"][0]["mac"] == mac and inv["dmi"]["vendor"] == "QEMU"
        done = next(e["body"]["detail"] for e in posts if e["body"].get("stage") == "download-done")
        assert done["bytes"] == (demo_image / ROOTFS).stat().st_size


def test_refuses_a_corrupted_image(demo_image: Path, tmp_path: Path) -> None:
    w = webroot(tmp_path, demo_image)
    (w / "bad").mkdir()
    bad = bytearray((demo_image / ROOTFS).read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    (w / "bad" / ROOTFS).write_bytes(bad)
    with BootNet(tmp_path, w) as net:
        vm = net.boot(demo_image, f"ramboot.url={net.url('bad/rootfs.squashfs')} ramboot.sha256={sha_of(demo_image)} "
                                  f"ramboot.server={SERVER_URL}")
        log = vm.wait_for(r"^ramboot: FAILED sha256 mismatch", 90, fail_on=r"^ramboot: booted")
        assert "ROOT IMAGE REJECTED" in log and "stage switch-root" not in log
        deadline = time.monotonic() + 15  # the console marker comes just before the POST
        while "failed" not in stages(net) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stages_until(net, "failed")[-1] == "failed" and "verified" not in stages(net)


def test_falls_back_to_the_second_url(demo_image: Path, tmp_path: Path) -> None:
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        down = f"http://{SERVER}:9/demo/rootfs.squashfs"  # nothing listens there
        vm = net.boot(demo_image, f"ramboot.url={down} ramboot.url={net.url('demo/rootfs.squashfs')} "
                                  f"ramboot.sha256={sha_of(demo_image)} ramboot.server={SERVER_URL}")
        vm.wait_for(r"^ramboot: booted", 90, fail_on=r"^ramboot: FAILED")
        starts = [e["body"]["detail"]["url"] for e in net.events() if e["body"].get("stage") == "download-start"]
        assert starts == [net.url("demo/rootfs.squashfs")]


def test_honours_root_live(demo_image: Path, tmp_path: Path) -> None:
    """The seed's dracut form, with nothing ramboot-specific on the command line."""
    with BootNet(tmp_path, webroot(tmp_path, demo_image)) as net:
        vm = net.boot(demo_image, f"root=live:{net.url('demo/rootfs.squashfs')}")
        log = vm.wait_for(r"^ramboot: booted", 90, fail_on=r"^ramboot: FAILED")
        assert "NOT verified" in log


def test_says_so_when_ram_is_too_small(demo_image: Path, tmp_path: Path) -> None:
    w = webroot(tmp_path, demo_image)
    (w / "huge").mkdir()
    with open(w / "huge" / ROOTFS, "wb") as f:
        f.truncate(400 * 1024 * 1024)  # sparse: costs no disk
    with BootNet(tmp_path, w) as net:
        vm = net.boot(demo_image, f"ramboot.url={net.url('huge/rootfs.squashfs')}", mem=256)
        vm.wait_for(r"^ramboot: FAILED not enough RAM: the root image is 400 MiB", 90, fail_on=r"^ramboot: booted")


def test_tools_present() -> None:
    """The boots above fail loudly, never skip, when a tool is missing."""
    for t in ("qemu-system-x86_64", "dnsmasq", "ip"):
        assert shutil.which(t) or Path("/usr/sbin", t).exists(), f"{t} missing: run `make setup`"
