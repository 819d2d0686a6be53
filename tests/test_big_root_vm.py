"""Big roots, the small proof: a root image half the size of the VM's RAM boots, and once
booted the image costs its compressed size once (it sits in tmpfs, the squashfs is read
on demand), not twice and not unpacked. The 1 GiB root in a 2 GiB VM, with the memory
figures in docs/images.md, is `bench/bigroot_bench.py` (too slow for the suite under TCG).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from ramboot.images.manifest import ROOTFS, load_manifest
from ramboot.images.rootfs import builtin_tree
from ramboot.lab.netns import Lab
from ramboot.lab.server import ramboot_cmd
from ramboot.lab.vm import choose_accel
from test_e2e_lab import ARTIFACTS, _explain
from test_node_modules_vm import _boot

pytestmark = [pytest.mark.vm, pytest.mark.netns]

MIB = 1 << 20
IMAGE_MIB = 256
VM_MB = 512
HOOK = "grep -E '^(MemTotal|MemAvailable|Shmem):' /proc/meminfo | sed 's/^/big-test: /' > /dev/console\n"


def test_root_image_half_the_ram_boots_and_costs_its_size_once(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    builtin_tree(tree)
    rcs = tree / "etc/init.d/rcS"
    rcs.write_text(rcs.read_text().replace("/usr/lib/ramboot/booted", HOOK + "/usr/lib/ramboot/booted"))
    (tree / "srv").mkdir()
    for i in range(IMAGE_MIB // 32):  # incompressible: the image is as big as its content
        (tree / "srv" / f"fill-{i:02d}.bin").write_bytes(os.urandom(32 * MIB))
    data = tmp_path / "data"
    p = subprocess.run([*ramboot_cmd(), "image", "build", "big", "--rootfs", str(tree), "--data-dir", str(data)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    size = load_manifest(data, "big").files[ROOTFS].size
    assert size >= IMAGE_MIB * MIB
    accel = choose_accel(Lab(ns="unused", root=tmp_path), data / "images/big/vmlinuz")[0]
    run, r, console = _boot("big-root", data / "images/big", tmp_path, accel, memory_mb=VM_MB)
    try:
        assert r.ok, _explain(r)
        mem = {k: int(v) for k, v in re.findall(r"^big-test: (\w+):\s+(\d+) kB", console, re.M)}
        used = (mem["MemTotal"] - mem["MemAvailable"]) * 1024
        (ARTIFACTS / "big-root.memory.txt").write_text(
            f"image {size / MIB:.0f} MiB, VM {VM_MB} MiB: MemTotal {mem['MemTotal'] // 1024} MiB, "
            f"MemAvailable {mem['MemAvailable'] // 1024} MiB, in use {used / MIB:.0f} MiB, "
            f"Shmem {mem['Shmem'] // 1024} MiB\n")
        assert mem["Shmem"] * 1024 >= size  # the image is in tmpfs ...
        assert used < size + 96 * MIB, mem  # ... once, plus the modules layer and a little to run in
    finally:
        run.close()
