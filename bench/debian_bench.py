#!/usr/bin/env python3
"""A real root: power-on to sshd for a Debian root with systemd, ramboot against the seed's stack.

    .venv/bin/python bench/debian_bench.py [--runs 2] [--stacks ramboot,seed] [--accel tcg]

The root is `ramboot image build debian --rootfs debian:bookworm:openssh-server
--kernel debian` (mmdebstrap; built once into `--cache`). Each stack boots a
blank SeaBIOS/iPXE-ROM VM in a lab network of its own (`rbd<random>-lab`,
made and removed here, as bench/e2e_bench.py does), with the same kernel,
initrd and squashfs:

- `ramboot`: `ramboot serve`, full DHCP mode: iPXE gets its script at once,
  kernel, initrd and root over HTTP.
- `seed`: dnsmasq DHCP + TFTP, `pxelinux.0`, `pxelinux.cfg/default`, kernel
  and initrd over lock-step TFTP, the root from python's `http.server`
  (`root=live:http://...`): bench/e2e_bench.py's seed stack. (ramboot's own
  initramfs on both sides, so the difference is the network path; a dracut
  livenet initrd behind nginx is left undone, see docs/benchmarks.md.)

The clock runs from QEMU's start to: the console's `ramboot: booted` (the
root's init, systemd, runs), and then to sshd answering with its banner on
port 22 (polled from the lab namespace every 0.2 s; the VM's address is the
server's neighbour entry for the VM's MAC).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import e2e_bench  # noqa: E402

from ramboot.bench.util import table  # noqa: E402
from ramboot.images.manifest import images_dir  # noqa: E402
from ramboot.lab.netns import Lab, LabError  # noqa: E402
from ramboot.lab.server import has_image, ramboot_cmd  # noqa: E402
from ramboot.lab.vm import boot_vm, random_mac  # noqa: E402

STACKS = {"ramboot": e2e_bench.start_ramboot, "seed": e2e_bench.start_seed}
PROBE = r"""
import socket, sys, time
ip, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        with socket.create_connection((ip, 22), timeout=1) as s:
            s.settimeout(2)
            if s.recv(4) == b"SSH-":
                print(time.time()); sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
"""


def debian_image(cache: Path) -> Path:
    data = cache / "data"
    if not has_image(data, "debian"):
        print(f"debian: building the Debian root into {cache} (once, a few minutes)", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / "build.log", "ab") as log:
            p = subprocess.run([*ramboot_cmd(), "image", "build", "debian",
                                "--rootfs", "debian:bookworm:openssh-server", "--kernel", "debian",
                                "--data-dir", str(data)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            sys.exit(f"debian: image build failed (see {cache / 'build.log'})")
    return images_dir(data) / "debian"


def vm_address(lab: Lab, mac: str) -> str | None:
    out = subprocess.run(["ip", "-n", lab.ns, "neigh", "show", "dev", lab.bridge],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if mac.lower() in line.lower():
            m = re.match(r"(\d+\.\d+\.\d+\.\d+)\s", line)
            if m:
                return m.group(1)
    return None


def boot_once(stack: str, img: Path, accel: str, timeout: float) -> dict:
    tag = "rbd" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"rbd-debian-{stack}-"))
    lab = Lab(ns=f"{tag}-lab", root=work)
    out: dict = {"stack": stack, "ok": False}
    mac = random_mac()
    sshd: dict = {}

    def probe() -> None:
        ip = None
        for _ in range(50):
            ip = vm_address(lab, mac)
            if ip:
                break
            time.sleep(0.2)
        if not ip:
            sshd["error"] = "no neighbour entry for the VM"
            return
        p = subprocess.run(["ip", "netns", "exec", lab.ns, sys.executable, "-c", PROBE, ip, "120"],
                           capture_output=True, text=True)
        if p.returncode == 0:
            sshd["at"] = float(p.stdout.strip())
        else:
            sshd["error"] = "sshd did not answer in 120 s"

    try:
        lab.create()
        api = STACKS[stack](lab, work, img)
        time.sleep(0.5)
        res = boot_vm(lab, "bios", mac, timeout=timeout, accel=accel, memory_mb=2048, on_booted=probe,
                      api_base=api or f"http://{e2e_bench.SERVER}:{e2e_bench.HTTP_PORT}")
        booted = res.first("booted")
        out.update(ok=res.ok and "at" in sshd, reason=res.reason or sshd.get("error", ""),
                   booted_s=round(booted.at - res.started, 2) if booted else None,
                   sshd_s=round(sshd["at"] - res.started, 2) if "at" in sshd else None,
                   marks=e2e_bench.milestones(res))
    except (LabError, OSError) as e:
        out["reason"] = str(e)
    finally:
        lab.teardown()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", default="ramboot,seed")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--accel", default=os.environ.get("RAMBOOT_LAB_ACCEL", "tcg"), choices=("tcg", "kvm"))
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--cache", type=Path, default=ROOT / "test-artifacts" / "bench" / "debian-image")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("debian_bench: needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    img = debian_image(a.cache)
    stacks = a.stacks.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in stacks}
    for i in range(a.runs):
        for s in stacks:
            load = os.getloadavg()[0]
            r = boot_once(s, img, a.accel, a.timeout)
            r["load_before"] = load
            runs[s].append(r)
            m = r.get("marks") or {}
            print(f"  {s:8s} run {i + 1} (load {load:.1f}): {'ok' if r['ok'] else 'FAILED'}"
                  f"  booted {r.get('booted_s')} s,"
                  f" sshd {r.get('sshd_s')} s  (iPXE DHCP {m.get('ipxe-dhcp')}, kernel {m.get('kernel-start')},"
                  f" initramfs {m.get('initramfs')})" + ("" if r["ok"] else f"  {r.get('reason')}"), flush=True)

    def med(s: str, k: str) -> float | None:
        xs = [r[k] for r in runs[s] if r["ok"] and r.get(k)]
        return statistics.median(xs) if xs else None

    seed = med("seed", "sshd_s") if "seed" in runs else None
    rows = []
    for s in stacks:
        t = med(s, "sshd_s")
        xs = [r["sshd_s"] for r in runs[s] if r["ok"]]
        rows.append([s, f"{len(xs)}/{len(runs[s])}", f"{t:.1f}" if t else "-",
                     f"{min(xs):.1f}-{max(xs):.1f}" if xs else "-", f"{med(s, 'booted_s') or 0:.1f}",
                     f"{t / seed:.2f}x" if t and seed else "-"])
    print(table(["stack", "ok", "QEMU start -> sshd (s, median)", "spread", "-> root's init (s)", "vs seed"],
                rows, title=f"Debian root (systemd, sshd), blank SeaBIOS/iPXE VM, {a.accel.upper()}, {a.runs} runs"))
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1))
    return 0 if all(r["ok"] for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
