#!/usr/bin/env python3
"""Big roots: a root image of about 1 GiB (compressed) booted in a 2 GiB VM, and what it costs.

The root is ramboot's built-in busybox root plus filler: half incompressible
(random bytes) and half text-like (random words from a small vocabulary, which
zstd squeezes about as much as a distribution's files), sized so that the zstd
squashfs comes out near `--size-mib`. It is built with the real CLI
(`ramboot image build big --rootfs DIR`), served by `ramboot serve` in a private lab
namespace (`ramboot.lab.netns.Lab`, made and removed here), and a blank VM boots it
over iPXE. The root's rcS prints /proc/meminfo before it reports `booted`, so the
memory after boot is read from the node itself.

Warewulf's figure is arithmetic from its documented design: the node image is a
cpio archive (optionally gzip'ed) that the kernel unpacks into its initramfs
(tmpfs/ramfs), so the root costs its uncompressed size in RAM for as long as the
node runs, and while it unpacks the archive is held too.

Usage: .venv/bin/python bench/bigroot_bench.py [--size-mib 1024] [--memory-mb 2048] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ramboot.images.manifest import ROOTFS, load_manifest  # noqa: E402
from ramboot.images.rootfs import builtin_tree  # noqa: E402
from ramboot.lab.netns import Lab  # noqa: E402
from ramboot.lab.server import lab_config_text, link_image, ramboot_cmd, start_server  # noqa: E402
from ramboot.lab.vm import boot_vm, format_timeline, random_mac  # noqa: E402

MIB = 1 << 20
HOOK = """grep -E '^(MemTotal|MemFree|MemAvailable|Buffers|Cached|Shmem):' /proc/meminfo \
| sed 's/^/bigroot: mem /' > /dev/console
df -k /run/ramboot/image | sed 's/^/bigroot: df /' > /dev/console
"""


def words_block(rng: random.Random, vocab: list[str], size: int) -> bytes:
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choices(vocab, k=12)) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def zstd_ratio(sample: bytes) -> float:
    z = subprocess.run(["zstd", "-15", "-q", "-c"], input=sample, capture_output=True, check=True).stdout
    return len(sample) / max(1, len(z))


def big_tree(dest: Path, size_mib: int, seed: int = 1) -> dict[str, int]:
    """The built-in root plus filler, for a squashfs of about `size_mib`; the filler's bytes by kind."""
    builtin_tree(dest)
    rcs = dest / "etc/init.d/rcS"
    rcs.write_text(rcs.read_text().replace("/usr/lib/ramboot/booted", HOOK + "/usr/lib/ramboot/booted"))
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(3, 11))) for _ in range(20000)]
    ratio = zstd_ratio(words_block(rng, vocab, 4 * MIB))
    rand_mib = size_mib // 2
    text_mib = int((size_mib - rand_mib) * ratio)
    fill = dest / "srv/filler"
    fill.mkdir(parents=True)
    for i in range(0, rand_mib, 16):
        (fill / f"random-{i:05d}.bin").write_bytes(os.urandom(min(16, rand_mib - i) * MIB))
    for i in range(0, text_mib, 16):
        n = min(16, text_mib - i) * MIB
        (fill / f"text-{i:05d}.txt").write_bytes(words_block(rng, vocab, n))
    return {"random_bytes": rand_mib * MIB, "text_bytes": text_mib * MIB}


def meminfo(console: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^bigroot: mem (\w+):\s+(\d+) kB", console, re.M)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="the root image's target compressed size")
    ap.add_argument("--memory-mb", type=int, default=2048, help="the VM's RAM")
    ap.add_argument("--work", type=Path, default=None, help="keep the tree, the image and the logs here")
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bigroot: needs root (network namespaces)", file=sys.stderr)
        return 1
    work = args.work or Path(tempfile.mkdtemp(prefix="ramboot-bigroot-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    tree = work / "tree"
    t0 = time.monotonic()
    if tree.exists():
        shutil.rmtree(tree)
    fill = big_tree(tree, args.size_mib)
    tree_bytes = int(subprocess.run(["du", "-sb", str(tree)], capture_output=True, text=True,
                                    check=True).stdout.split()[0])
    print(f"bigroot: tree of {tree_bytes / MIB:.0f} MiB made in {time.monotonic() - t0:.0f} s", flush=True)
    t0 = time.monotonic()
    subprocess.run([*ramboot_cmd(), "image", "build", "big", "--rootfs", str(tree), "--data-dir", str(data)],
                   check=True, stdin=subprocess.DEVNULL)
    build_s = time.monotonic() - t0
    shutil.rmtree(tree)
    m = load_manifest(data, "big")
    image_bytes = m.files[ROOTFS].size
    print(f"bigroot: root image {image_bytes / MIB:.0f} MiB (from {tree_bytes / MIB:.0f} MiB), "
          f"built in {build_s:.0f} s", flush=True)

    lab = Lab(ns=f"rbb{os.getpid()}-big"[:40], root=work / "lab")
    lab.create()
    try:
        link_image(data / "images" / "big", lab.data_dir, "big")
        lab.config_file.write_text(lab_config_text(lab, lab.data_dir, boot={"default_image": "big"}))
        base = start_server(lab, lab.config_file, lab.log_file)
        r = boot_vm(lab, "bios", random_mac(), 900, echo=None, api_base=base, accel=args.accel,
                    memory_mb=args.memory_mb)
        print(format_timeline(r), flush=True)
        console = r.console_log.read_text(errors="replace").replace("\r", "")
        shutil.copyfile(r.console_log, work / "console.log")
    finally:
        lab.teardown()
    if not r.ok:
        print(f"bigroot: FAILED: {r.reason}; console in {work / 'console.log'}", file=sys.stderr)
        return 1
    mem = meminfo(console)
    booted = r.first("booted")
    boot_s = (booted.at - r.started) if booted else None
    used_kib = mem.get("MemTotal", 0) - mem.get("MemAvailable", 0)
    ww_resident = tree_bytes
    ww_peak = tree_bytes + image_bytes  # the archive is held while the kernel unpacks it (if compressed like ours)
    out = {
        "image_bytes": image_bytes, "tree_bytes": tree_bytes, **fill, "vm_memory_mb": args.memory_mb,
        "build_seconds": round(build_s, 1), "boot_seconds": round(boot_s, 1) if boot_s else None,
        "meminfo_kib": mem, "used_kib": used_kib,
        "warewulf_resident_bytes": ww_resident, "warewulf_peak_bytes": ww_peak,
    }
    print(f"bigroot: booted in {boot_s:.1f} s ({r.accel}); MemTotal {mem.get('MemTotal', 0) / 1024:.0f} MiB, "
          f"MemAvailable {mem.get('MemAvailable', 0) / 1024:.0f} MiB, in use {used_kib / 1024:.0f} MiB, "
          f"of which the image in tmpfs {image_bytes / MIB:.0f} MiB (Shmem {mem.get('Shmem', 0) / 1024:.0f} MiB)")
    print(f"bigroot: Warewulf (uncompressed cpio in the initramfs) would hold {ww_resident / MIB:.0f} MiB for good, "
          f"about {ww_peak / MIB:.0f} MiB while unpacking a compressed archive")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
