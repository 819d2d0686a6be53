#!/usr/bin/env python3
"""End to end: QEMU start to the RAM root's init, blank SeaBIOS/iPXE-ROM VM, three stacks.

Every stack boots the same kernel, initrd (ramboot's busybox initramfs) and
squashfs (the built-in image, `ramboot image build demo`), in its own lab
network (a namespace `rbb<random>-lab` with bridge rb0 and the server at
172.22.33.2, made and removed by this script with `ramboot.lab.netns.Lab`),
with the lab's VM code (`ramboot.lab.vm.boot_vm`, TCG by default as in
BASELINES.md). The clock runs from QEMU's start to the console's
`ramboot: booted` line, printed by the RAM root's own init.

Stacks:
- `ramboot`: `ramboot serve` in full DHCP mode (iPXE gets its script URL at once).
- `ramboot-proxy`: `ramboot serve` in proxy mode beside a site DHCP server
  (dnsmasq, addresses only, in a namespace of its own on the lab bridge at
  172.22.33.1, as tests/test_e2e_lab.py::test_proxy_mode_beside_site_dhcp):
  the goal is within 1.2x of `ramboot`, with nothing set for proxy mode.
- `seed`: the seed's stack: dnsmasq DHCP + TFTP handing out `pxelinux.0`, then
  `pxelinux.cfg/default`, kernel and initrd over TFTP, and the root from
  python's `http.server` (`root=live:http://...`).
- `dnsmasq-ipxe`: the best-tuned dnsmasq + iPXE chain: a client with user
  class iPXE gets an http script URL in the first offer, with iPXE's option
  175.176 (no-pxedhcp) so it does not wait for ProxyDHCP offers, and router
  advertisements (`--enable-ra`, ra-only) so iPXE's IPv6 configurator ends at
  once; kernel, initrd and root over HTTP (python `http.server`); others get
  `undionly.kpxe` over TFTP.

Usage: .venv/bin/python bench/e2e_bench.py [--runs 1] [--stacks ramboot,ramboot-proxy,seed,dnsmasq-ipxe] [--accel tcg]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's ramboot, and the bench package

from bench.util import table  # noqa: E402
from ramboot.images.manifest import INITRD, KERNEL, ROOTFS, images_dir  # noqa: E402
from ramboot.lab.netns import Lab, LabError  # noqa: E402
from ramboot.lab.server import LAB_KERNEL_ARGS, build_image, has_image, lab_config_text, link_image, start_server  # noqa: E402
from ramboot.lab.vm import BootResult, boot_vm, format_timeline  # noqa: E402

SERVER = "172.22.33.2"
HTTP_PORT = 8000
PXELINUX = Path("/usr/lib/PXELINUX/pxelinux.0")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
UNDIONLY = Path("/usr/lib/ipxe/undionly.kpxe")
IMAGE_FILES = (KERNEL, INITRD, ROOTFS)


def image_dir(cache: Path) -> Path:
    if not has_image(cache / "data", "demo"):
        print(f"e2e: building the built-in image into {cache} (once)", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        build_image(cache / "data", "demo", log=cache / "build.log", echo=False)
    return images_dir(cache / "data") / "demo"


def dnsmasq_cmd(work: Path, *extra: str) -> list[str]:
    return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--pid-file=", "--port=0", "--interface=rb0",
            "--bind-interfaces", "--dhcp-range=172.22.33.100,172.22.33.200,1h",
            f"--dhcp-leasefile={work / 'dnsmasq.leases'}", "--dhcp-authoritative", "--log-dhcp", *extra]


def http_server_cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", SERVER, "--directory", str(root)]


def start_seed(lab: Lab, work: Path, img: Path) -> str | None:
    tftp = work / "tftp"
    (tftp / "pxelinux.cfg").mkdir(parents=True)
    for src in (PXELINUX, LDLINUX, img / "vmlinuz", img / "initrd.img"):
        shutil.copyfile(src, tftp / src.name)
    www = work / "www"
    www.mkdir()
    shutil.copyfile(img / "rootfs.squashfs", www / "rootfs.squashfs")
    (tftp / "pxelinux.cfg" / "default").write_text(
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd.img\n"
        f"  APPEND {LAB_KERNEL_ARGS} root=live:http://{SERVER}:{HTTP_PORT}/rootfs.squashfs\n  IPAPPEND 2\n")
    for p in (work, tftp, www):
        p.chmod(0o755)
    lab.spawn("dnsmasq", dnsmasq_cmd(work, "--enable-tftp", f"--tftp-root={tftp}", "--dhcp-boot=pxelinux.0"),
              log=work / "dnsmasq.log")
    lab.spawn("httpd", http_server_cmd(www), log=work / "httpd.log")
    return None


def start_dnsmasq_ipxe(lab: Lab, work: Path, img: Path) -> str | None:
    tftp = work / "tftp"
    tftp.mkdir()
    shutil.copyfile(UNDIONLY, tftp / "undionly.kpxe")
    www = work / "www"
    www.mkdir()
    for f in IMAGE_FILES:
        shutil.copyfile(img / f, www / f)
    base = f"http://{SERVER}:{HTTP_PORT}"
    (www / "boot.ipxe").write_text(
        "#!ipxe\n"
        f"kernel {base}/vmlinuz initrd=initrd.img {LAB_KERNEL_ARGS} root=live:{base}/rootfs.squashfs"
        " BOOTIF=01-${netX/mac:hexhyp}\n"
        f"initrd {base}/initrd.img\nboot\n")
    for p in (work, tftp, www):
        p.chmod(0o755)
    # dnsmasq can end iPXE's IPv6 wait too, with router advertisements (ra-only);
    # it needs an IPv6 prefix on the interface to advertise.
    lab.ip("addr", "add", "fd77:22:33::2/64", "dev", "rb0", "nodad")
    lab.spawn("dnsmasq", dnsmasq_cmd(
        work, "--enable-tftp", f"--tftp-root={tftp}", "--enable-ra", "--dhcp-range=::,constructor:rb0,ra-only",
        "--dhcp-userclass=set:ipxe,iPXE",
        f"--dhcp-boot=tag:ipxe,{base}/boot.ipxe",
        "--dhcp-boot=tag:!ipxe,undionly.kpxe",
        # iPXE's no-pxedhcp: take this offer without waiting for ProxyDHCP offers
        "--dhcp-option-force=tag:ipxe,encap:175,176,1",
    ), log=work / "dnsmasq.log")
    lab.spawn("httpd", http_server_cmd(www), log=work / "httpd.log")
    return None


def start_ramboot(lab: Lab, work: Path, img: Path) -> str | None:
    link_image(img, lab.data_dir, "demo")
    lab.config_file.write_text(lab_config_text(lab, lab.data_dir, boot={"default_image": "demo"}))
    return start_server(lab, lab.config_file, lab.log_file)


def start_ramboot_proxy(lab: Lab, work: Path, img: Path) -> str | None:
    site = f"{lab.ns}-site"[:40]
    lab.add_peer(site, "172.22.33.1/24")
    lab.spawn("site-dhcp", [
        "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--pid-file=", "--port=0", "--interface=eth0",
        "--bind-interfaces", "--no-ping", "--dhcp-range=172.22.33.50,172.22.33.90,1h",
        f"--dhcp-leasefile={work / 'site.leases'}", "--log-dhcp",
    ], log=work / "site-dnsmasq.log", netns=site)
    link_image(img, lab.data_dir, "demo")
    lab.config_file.write_text(lab_config_text(lab, lab.data_dir, dhcp='mode = "proxy"\n',
                                               boot={"default_image": "demo"}))
    return start_server(lab, lab.config_file, lab.log_file)


STACKS = {"ramboot": start_ramboot, "ramboot-proxy": start_ramboot_proxy, "seed": start_seed,
          "dnsmasq-ipxe": start_dnsmasq_ipxe}


def milestones(res: BootResult) -> dict[str, float | None]:
    def t(stage: str) -> float | None:
        m = res.first(stage)
        return round(m.at - res.started, 2) if m else None

    return {k: t(k) for k in ("ipxe", "ipxe-dhcp", "pxelinux", "script", "kernel-start", "initramfs", "download-done",
                              "booted")}


def boot_once(stack: str, img: Path, accel: str, timeout: float, keep: Path | None) -> dict[str, Any]:
    tag = "rbb" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"rbb-e2e-{stack}-"))
    lab = Lab(ns=f"{tag}-lab", root=work)
    out: dict[str, Any] = {"stack": stack, "ok": False}
    try:
        lab.create()
        api = STACKS[stack](lab, work, img)
        time.sleep(0.5)  # dnsmasq and http.server bind
        res = boot_vm(lab, "bios", timeout=timeout, accel=accel, api_base=api or f"http://{SERVER}:{HTTP_PORT}")
        booted = res.first("booted")
        out.update(ok=res.ok, seconds=round((booted.at if booted else res.ended) - res.started, 2),
                   reason=res.reason, marks=milestones(res), timeline=format_timeline(res))
        shutil.copy(res.console_log, work / "console.log") if res.console_log.exists() else None
    except (LabError, OSError) as e:
        out["reason"] = str(e)
    finally:
        lab.teardown()
        if keep:
            dest = keep / f"{stack}-{tag}"
            dest.mkdir(parents=True, exist_ok=True)
            for f in work.rglob("*.log"):
                shutil.copy(f, dest / f.name)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", default="ramboot,ramboot-proxy,seed,dnsmasq-ipxe")
    ap.add_argument("--runs", type=int, default=1, help="boots per stack (interleaved); the median is reported")
    ap.add_argument("--accel", default=os.environ.get("RAMBOOT_LAB_ACCEL", "tcg"), choices=("tcg", "kvm"))
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--cache", type=Path, default=ROOT / "test-artifacts" / "bench" / "e2e-image",
                    help="where the built-in image is built once and kept")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep server/dnsmasq/console logs here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each boot's timeline")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("e2e_bench: needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    for tool, what in (("qemu-system-x86_64", "qemu-system-x86"), ("dnsmasq", "dnsmasq-base")):
        if not shutil.which(tool):
            print(f"e2e_bench: {tool} missing (Debian: {what})", file=sys.stderr)
            return 2
    img = image_dir(a.cache)
    stacks = a.stacks.split(",")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in stacks}
    for i in range(a.runs):
        for s in stacks:
            r = boot_once(s, img, a.accel, a.timeout, a.keep)
            runs[s].append(r)
            m = r.get("marks") or {}
            print(f"  {s:13s} run {i + 1}: {'booted' if r['ok'] else 'FAILED'} in {r.get('seconds', 0):.1f} s"
                  f"  (iPXE dhcp done {m.get('ipxe-dhcp')}, kernel {m.get('kernel-start')}, booted {m.get('booted')})"
                  + ("" if r["ok"] else f"  {r.get('reason')}"), flush=True)
            if a.verbose and r.get("timeline"):
                print(r["timeline"], flush=True)

    def med(s: str) -> float | None:
        xs = [r["seconds"] for r in runs[s] if r["ok"]]
        return statistics.median(xs) if xs else None

    seed = med("seed") if "seed" in runs else None
    full = med("ramboot") if "ramboot" in runs else None
    rows = []
    for s in stacks:
        ok = [r for r in runs[s] if r["ok"]]
        m = ok[len(ok) // 2]["marks"] if ok else {}
        t = med(s)
        rows.append([s, f"{len(ok)}/{len(runs[s])}", f"{t:.1f}" if t else "-", m.get("ipxe-dhcp") or "-",
                     m.get("kernel-start") or "-", m.get("initramfs") or "-", m.get("booted") or "-",
                     f"{t / seed:.2f}x" if t and seed else "-", f"{t / full:.2f}x" if t and full else "-"])
    print(table(["stack", "booted", "QEMU start -> init (s)", "iPXE DHCP done", "kernel starts", "initramfs",
                 "root init", "vs seed", "vs ramboot full"],
                rows, title=f"End to end: blank SeaBIOS/iPXE-ROM VM, {a.accel.upper()}, median of {a.runs}"))
    if a.json:
        a.json.write_text(json.dumps({s: [{k: v for k, v in r.items() if k != "timeline"} for r in rs]
                                      for s, rs in runs.items()}, indent=1))
    return 0 if all(r["ok"] for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
