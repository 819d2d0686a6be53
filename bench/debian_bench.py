#!/usr/bin/env python3
"""A real root: power-on to sshd for a Debian root with systemd, ramboot against the seed's stack.

    .venv/bin/python bench/debian_bench.py [--runs 2] [--stacks ramboot,seed] [--accel tcg] [--keep DIR]

The root is `ramboot image build debian --rootfs debian:bookworm:openssh-server
--kernel debian` (mmdebstrap; built once into `--cache` per version of ramboot's
image code, with the stock dracut initrd beside it). Each stack boots a
blank SeaBIOS/iPXE-ROM VM (2 GiB) in a lab network of its own (`rbd<random>-lab`,
made and removed here, as bench/e2e_bench.py does), with the same kernel and
the same squashfs:

- `ramboot`: `ramboot serve`, full DHCP mode: iPXE gets its script at once;
  kernel, ramboot's initramfs, root and modules layer over HTTP; the root's
  sha256 checked, the node's identity (host keys, hostname, hosts) laid on,
  every stage reported to the server.
- `seed`: the seed's own stack: dnsmasq DHCP + TFTP handing out `pxelinux.0`,
  `pxelinux.cfg/default`, kernel and a stock dracut livenet initrd over
  lock-step TFTP (Debian's dracut 059: livenet, dmsquash-live, network-legacy,
  no ramboot module), and `root=live:http://...` from nginx (a child of this
  script, its config in the run's temporary directory). Nothing checks the
  root's bytes; the root makes its ssh host keys at boot.
- `seed-ramboot-initrd` (not run by default): the seed's network path
  (dnsmasq, pxelinux, TFTP) with ramboot's initramfs behind python's
  `http.server`, bench/e2e_bench.py's seed stack: what the initramfs alone is worth.

The clock runs from QEMU's start to milestones read off the serial console
(the kernel's, the initramfs's, dracut's and systemd's own lines), to systemd
starting the root's `ramboot-booted.service` (`ramboot: booted` on the console;
the same unit in the same squashfs on every stack), and to sshd answering with
its banner on port 22, polled from the lab namespace every 0.2 s from QEMU's
start (the VM's address is the lab's neighbour entry for the VM's MAC).
`--keep DIR` writes each boot's console with those times, and the servers' logs.
"""

from __future__ import annotations

import argparse
import hashlib
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's ramboot, and the bench package

from rich.console import Console  # noqa: E402

from bench import e2e_bench  # noqa: E402
from bench.util import nginx_argv, table  # noqa: E402
from ramboot.images.dracut import build_dracut  # noqa: E402
from ramboot.images.errors import ImageError  # noqa: E402
from ramboot.images.kernel import resolve_kernel  # noqa: E402
from ramboot.images.manifest import images_dir, load_manifest  # noqa: E402
from ramboot.lab.netns import Lab, LabError  # noqa: E402
from ramboot.lab.server import LAB_KERNEL_ARGS, has_image, lab_config_text, link_image, ramboot_cmd, start_server  # noqa: E402
from ramboot.lab.vm import boot_vm, random_mac  # noqa: E402
from ramboot.policy import DRACUT_LIVE_ARGS  # noqa: E402

SERVER = e2e_bench.SERVER
PROBE = r"""
import re, socket, subprocess, sys, time
mac, dev, deadline = sys.argv[1].lower(), sys.argv[2], time.time() + float(sys.argv[3])
while time.time() < deadline:
    neigh = subprocess.run(["ip", "neigh", "show", "dev", dev], capture_output=True, text=True).stdout
    ip = next((ln.split()[0] for ln in neigh.splitlines() if mac in ln.lower() and re.match(r"\d+\.", ln)), None)
    if ip:
        try:
            with socket.create_connection((ip, 22), timeout=1) as s:
                s.settimeout(60)  # a connection accepted early waits for sshd, as ssh's own client does
                if s.recv(4) == b"SSH-":
                    print(time.time()); sys.exit(0)
        except OSError:
            pass
    time.sleep(0.2)
sys.exit(1)
"""
# Milestones off the console, the first line matching each, in boot order. Both
# initramfs flavours and both roots print these (ramboot's own markers, the kernel's
# printk, systemd's status lines), so one list serves every stack.
MILESTONES = (
    ("firmware DHCP", r"Configuring \(net\d"),
    ("pxelinux", r"PXELINUX \d"),
    ("kernel starts", r"Linux version \d"),
    ("initramfs runs", r"Run /init as init process"),
    ("root download starts", r"ramboot: stage download-start|dracut-initqueue\[\d+\]: +% Total"),
    ("root downloaded", r"ramboot: stage download-done|^100 +\S+ +100 "),
    ("root checked", r"ramboot: stage verified"),
    ("modules layer", r"ramboot: stage modules"),
    ("switch root", r"ramboot: stage switch-root|Starting initrd-switch-root\.service"),
    ("root's systemd", r"Welcome to Debian GNU/Linux \d+ \(\w+\)!"),
    ("booted", r"^ramboot: booted"),
    ("sshd started", r"Started ssh\.service"),
    ("multi-user", r"Reached target multi-user\.target"),
)


def code_key() -> str:
    """ramboot's image code (builders, initramfs, the root's units): a change makes a new image."""
    h = hashlib.sha256()
    src = ROOT / "src/ramboot/images"
    for p in sorted(src.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def debian_image(cache: Path) -> Path:
    data = cache / f"data-{code_key()}"
    if not has_image(data, "debian"):
        print(f"debian: building the Debian root into {data} (once per version of the image code, a few minutes)",
              flush=True)
        data.mkdir(parents=True, exist_ok=True)
        with open(data / "build.log", "ab") as log:
            p = subprocess.run([*ramboot_cmd(), "image", "build", "debian",
                                "--rootfs", "debian:bookworm:openssh-server", "--kernel", "debian",
                                "--data-dir", str(data)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            sys.exit(f"debian: image build failed (see {data / 'build.log'})")
    return images_dir(data) / "debian"


def stock_dracut_initrd(cache: Path, img: Path) -> Path:
    """Stock dracut's livenet initrd for the image's kernel, built once (no ramboot module)."""
    version = load_manifest(img.parents[1], img.name).kernel_version
    out = cache / f"dracut-stock-{version}.img"
    if not out.is_file():
        print(f"debian: building a stock dracut livenet initrd for {version} (once)", flush=True)
        k = resolve_kernel("debian", Console(stderr=True))
        if k.version != version:
            sys.exit(f"debian: the image's kernel is {version} but Debian's cloud kernel is now {k.version}: "
                     f"remove {cache} to rebuild both")
        build_dracut(k, out, Console(stderr=True), own_module=False)
    return out


def start_ramboot(lab: Lab, work: Path, img: Path, args: str) -> str:
    link_image(img, lab.data_dir, "debian")
    kargs = " ".join(a for a in (LAB_KERNEL_ARGS, args) if a)
    lab.config_file.write_text(lab_config_text(lab, lab.data_dir, boot={"default_image": "debian",
                                                                       "kernel_args": kargs}))
    return start_server(lab, lab.config_file, lab.log_file)


def start_seed(lab: Lab, work: Path, img: Path, args: str, initrd: Path) -> str:
    tftp, www = work / "tftp", work / "www"
    (tftp / "pxelinux.cfg").mkdir(parents=True)
    www.mkdir()
    (work / "tmp").mkdir()
    for src in (e2e_bench.PXELINUX, e2e_bench.LDLINUX, img / "vmlinuz"):
        shutil.copyfile(src, tftp / src.name)
    shutil.copyfile(initrd, tftp / "initrd.img")
    shutil.copyfile(img / "rootfs.squashfs", www / "rootfs.squashfs")
    kargs = " ".join(a for a in (LAB_KERNEL_ARGS, f"root=live:http://{SERVER}/rootfs.squashfs", DRACUT_LIVE_ARGS,
                                 "ip=dhcp", args) if a)
    (tftp / "pxelinux.cfg" / "default").write_text(
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd.img\n"
        f"  APPEND {kargs}\n  IPAPPEND 2\n")
    for p in (work, tftp, www):
        p.chmod(0o755)
    lab.spawn("dnsmasq", e2e_bench.dnsmasq_cmd(work, "--enable-tftp", f"--tftp-root={tftp}",
                                               "--dhcp-boot=pxelinux.0"), log=work / "dnsmasq.log")
    lab.spawn("nginx", nginx_argv(work, www, f"{SERVER}:80", workers="1", connections=64, access_log=True),
              log=work / "nginx.log")
    return f"http://{SERVER}"


def start_seed_ramboot_initrd(lab: Lab, work: Path, img: Path, args: str) -> str:
    if args:
        sys.exit("debian: --args is not passed to seed-ramboot-initrd (bench/e2e_bench.py's command line)")
    e2e_bench.start_seed(lab, work, img)
    return f"http://{SERVER}:{e2e_bench.HTTP_PORT}"


STACKS = ("ramboot", "seed", "seed-ramboot-initrd")


def milestones(lines: list[tuple[float, str]], started: float) -> dict[str, float]:
    out: dict[str, float] = {}
    pats = [(name, re.compile(rx)) for name, rx in MILESTONES]
    for at, text in lines:
        for name, rx in pats:
            if name not in out and rx.search(text):
                out[name] = round(at - started, 2)
    return out


def boot_once(stack: str, img: Path, initrd: Path | None, accel: str, timeout: float, args: str,
              keep: Path | None) -> dict[str, Any]:
    tag = "rbd" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"rbd-debian-{stack}-"))
    lab = Lab(ns=f"{tag}-lab", root=work)
    out: dict[str, Any] = {"stack": stack, "ok": False}
    mac = random_mac()
    probe = None
    try:
        lab.create()
        if stack == "ramboot":
            api = start_ramboot(lab, work, img, args)
        elif stack == "seed":
            assert initrd is not None  # main makes it when the seed stack runs
            api = start_seed(lab, work, img, args, initrd)
        else:
            api = start_seed_ramboot_initrd(lab, work, img, args)
        time.sleep(0.5)  # dnsmasq and the web server bind
        # From QEMU's start: the VM's address (the lab's neighbour entry for its MAC), then port 22's banner.
        probe = subprocess.Popen(["ip", "netns", "exec", lab.ns, sys.executable, "-c", PROBE, mac, lab.bridge,
                                  str(timeout)], stdout=subprocess.PIPE, text=True)
        said = probe.stdout
        assert said is not None  # a PIPE

        def wait_sshd() -> None:
            """`booted` and sshd's banner come in either order: the VM runs until both have."""
            try:
                probe.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

        res = boot_vm(lab, "bios", mac, timeout=timeout, accel=accel, memory_mb=2048, api_base=api,
                      on_booted=wait_sshd)
        sshd_at = float(said.read().strip() or 0) if probe.poll() == 0 else None
        marks = milestones(res.lines, res.started)
        if sshd_at:
            marks["sshd answers"] = round(sshd_at - res.started, 2)
        out.update(ok=res.ok and bool(sshd_at), reason=res.reason or ("" if sshd_at else "sshd did not answer"),
                   booted_s=marks.get("booted"), sshd_s=marks.get("sshd answers"), marks=marks)
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            with open(keep / f"{stack}-{tag}.console.txt", "w") as f:
                f.writelines(f"{at - res.started:8.2f}  {text}\n" for at, text in res.lines)
    except (LabError, OSError) as e:
        out["reason"] = str(e)
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()  # our child, by its PID
            probe.wait()
        lab.teardown()
        if keep:
            for log in work.glob("*.log"):
                shutil.copy(log, keep / f"{stack}-{tag}.{log.name}")
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", default="ramboot,seed", help=f"comma-separated, of: {', '.join(STACKS)}")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--accel", default=os.environ.get("RAMBOOT_LAB_ACCEL", "tcg"), choices=("tcg", "kvm"))
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--args", default="", help="kernel arguments added on every stack (systemd.log_level=info, ...)")
    ap.add_argument("--cache", type=Path, default=ROOT / "test-artifacts" / "bench" / "debian-image")
    ap.add_argument("--keep", type=Path, help="write each boot's timestamped console and server logs here")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    stacks = a.stacks.split(",")
    bad = [s for s in stacks if s not in STACKS]
    if bad:
        print(f"debian_bench: unknown stack {bad[0]!r} (use {', '.join(STACKS)})", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("debian_bench: needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    if "seed" in stacks and not shutil.which("nginx"):
        print("debian_bench: nginx missing (Debian: nginx-light or nginx)", file=sys.stderr)
        return 2
    img = debian_image(a.cache)
    try:
        initrd = stock_dracut_initrd(a.cache, img) if "seed" in stacks else None
    except ImageError as e:
        print(f"debian_bench: {e}", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in stacks}
    load_start = os.getloadavg()[0]
    for i in range(a.runs):
        for s in stacks:
            load = os.getloadavg()[0]
            r = boot_once(s, img, initrd, a.accel, a.timeout, a.args, a.keep)
            r["load_before"] = load
            runs[s].append(r)
            m = r.get("marks") or {}
            print(f"  {s:20s} run {i + 1} (load {load:.1f}): {'ok' if r['ok'] else 'FAILED'}  "
                  + ", ".join(f"{k} {v}" for k, v in m.items()) + ("" if r["ok"] else f"  {r.get('reason')}"),
                  flush=True)
    load_end = os.getloadavg()[0]

    def med(s: str, k: str) -> float | None:
        xs = [r["marks"][k] for r in runs[s] if r["ok"] and k in r["marks"]]
        return statistics.median(xs) if xs else None

    names = [n for n, _ in MILESTONES] + ["sshd answers"]
    names = [n for n in names if any(med(s, n) is not None for s in stacks)]
    rows = [[n] + [f"{med(s, n):.1f}" if med(s, n) is not None else "-" for s in stacks] for n in names]
    seed = med("seed", "sshd answers") if "seed" in runs else None
    rows.append(["ok"] + [f"{sum(r['ok'] for r in runs[s])}/{len(runs[s])}" for s in stacks])
    sshd = [med(s, "sshd answers") for s in stacks]
    rows.append(["vs seed (sshd)"] + [f"{v / seed:.2f}x" if seed and v else "-" for v in sshd])
    print(table(["milestone (s since QEMU start, median)", *stacks], rows,
                title=f"Debian root (systemd, sshd), blank SeaBIOS/iPXE VM, {a.accel.upper()}, {a.runs} runs, "
                      f"load {load_start:.1f} -> {load_end:.1f}"))
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1))
    return 0 if all(r["ok"] for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
