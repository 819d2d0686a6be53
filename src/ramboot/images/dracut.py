"""`--initramfs dracut`: the seed's classic path (dracut's livenet + dmsquash-live).

dracut is run from Debian's packages unpacked into ramboot's cache
(`apt-get download` + `dpkg-deb -x`) rather than installed: installing the
`dracut` package would replace the host's initramfs-tools. The host tools
dracut copies into the image (udev, dmsetup, kpartx, dhclient, arping) come
from `make setup`. The node's command line then needs the dracut form:
`root=live:URL rd.neednet=1 rd.live.overlay.overlayfs=1 ip=dhcp` (`ip=auto6` over IPv6).

ramboot adds a dracut module of its own (`dracut-module/`, installed as
`99ramboot`): it downloads the root in livenet's place (every server in turn,
seeding peers with a fall-back to the server), checks its sha256
(`ramboot.sha256=`) before dmsquash-live mounts it and refuses a mismatch, seeds
the verified files to peers after switch-root, reports the
boot stages to `ramboot.server=`, makes the overlay directories that systemd's
sysroot.mount needs, lays the node's overlay (its identity) on the writable layer,
mounts the kernel's modules layer, and leaves the root what it needs to report
`booted`. The cached dracut tree is never changed: each build runs dracut from a
base directory of links to it, plus that module.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from rich.console import Console

from .errors import ImageError
from .kernel import Kernel, _run, cache_dir, in_root, read_in_root
from .rootfs import source_epoch

PACKAGES = ("dracut-core", "dracut-live", "dracut-network")
HOST_TOOLS = ("udevadm", "dmsetup", "kpartx", "dhclient", "arping", "cpio", "curl", "sha256sum", "tar")
MODULE = "99ramboot"


def dracut_tree(console: Console) -> Path:
    """The unpacked dracut packages, fetched once and cached by version."""
    versions = []
    for pkg in PACKAGES:
        out = _run(["apt-cache", "policy", pkg], f"resolving {pkg}")
        cand = next((ln.split()[1] for ln in out.splitlines() if "Candidate:" in ln), "(none)")
        if cand == "(none)":
            raise ImageError(f"--initramfs dracut: apt knows no installable {pkg}")
        versions.append(f"{pkg}={cand}")
    root = cache_dir() / "dracut"
    root.mkdir(parents=True, exist_ok=True)
    tree = root / "_".join(v.replace("=", "-") for v in versions)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tree / ".complete").exists():
            with tempfile.TemporaryDirectory(dir=root, prefix=".dl-") as tmp, console.status("downloading dracut…"):
                _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *versions],
                     "downloading dracut", cwd=Path(tmp))
                unpack = Path(tmp) / "tree"
                for deb in sorted(Path(tmp).glob("*.deb")):
                    _run(["dpkg-deb", "-x", str(deb), str(unpack)], f"unpacking {deb.name}")
                (unpack / ".complete").write_text("\n".join(versions) + "\n")
                if tree.exists():
                    shutil.rmtree(tree)
                os.rename(unpack, tree)
    return tree


def build_dracut(k: Kernel, out: Path, console: Console, own_module: bool = True) -> None:
    """dracut's livenet initramfs for `k`; `own_module` False leaves ramboot's 99ramboot out,
    stock dracut as a site would build it (the seed's side in bench/debian_bench.py)."""
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None and not Path("/sbin", t).exists()]
    if missing:
        raise ImageError(f"--initramfs dracut needs {', '.join(missing)} on this host: run `make setup`")
    tree = dracut_tree(console)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".dracut-") as tmp:
        kmoddir = stage_modules(k, Path(tmp) / "kmod/lib/modules" / k.version)  # dracut wants .../lib/modules/V
        base = _basedir(tree / "usr/lib/dracut", Path(tmp) / "base", own_module)
        confdir = Path(tmp) / "conf.d"
        confdir.mkdir()
        cmd = ["bash", str(tree / "usr/bin/dracut"), "--force", "--no-hostonly", "--no-hostonly-cmdline",
               "--kver", k.version, "--kmoddir", str(kmoddir),
               "--add", "livenet dmsquash-live network-legacy" + (f" {MODULE[2:]}" if own_module else ""),
               "--omit", "systemd-networkd network-manager",
               "--conf", "/dev/null", "--confdir", str(confdir), "--tmpdir", tmp, "--reproducible",
               "--zstd", str(out)]
        env = dict(os.environ, dracutbasedir=str(base), SOURCE_DATE_EPOCH=str(source_epoch()))
        with console.status("building the dracut initramfs…"):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not out.is_file():
        errs = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln or "FATAL" in ln]
        raise ImageError(f"dracut failed: {(errs or proc.stderr.strip().splitlines()[-1:] or ['no image'])[0]}")
    os.chmod(out, 0o644)


def stage_modules(k: Kernel, dest: Path) -> Path:
    """A clean copy of k's module tree for dracut: regular files and directories only.

    dracut (and the libkmod under it) would follow a symlink or an absolute modules.dep
    entry on the build host, so it is handed this instead: every file resolved inside the
    kernel's root (a symlink as if the root were `/`; one to a directory is left out), only
    regular files (hard links where the filesystem allows, else copies), and a modules.dep
    whose every name is a path inside the tree.
    """
    dep = k.module_file("modules.dep")
    if dep is None:
        raise ImageError(f"{k.modules}/modules.dep: no such file")
    for line in dep.decode(errors="replace").splitlines():
        if ":" in line:
            k.module_file(line.partition(":")[0])  # refuses an absolute name or `..`
    for dirpath, dirnames, filenames in os.walk(k.modules):
        here = Path(dirpath)
        (dest / here.relative_to(k.modules)).mkdir(parents=True, exist_ok=True)
        dirnames[:] = [n for n in dirnames if not (here / n).is_symlink()]
        for n in filenames:
            rel = (here / n).relative_to(k.modules)
            real = in_root(k.root, str((here / n).relative_to(k.root)))
            if real is None or not stat.S_ISREG(real.lstat().st_mode):
                continue  # a dangling link, a device node, a FIFO: nothing dracut needs
            try:
                os.link(real, dest / rel, follow_symlinks=False)
            except OSError:
                data = read_in_root(k.root, here / n)
                (dest / rel).write_bytes(data or b"")
    return dest


def _basedir(dracut: Path, base: Path, own_module: bool) -> Path:
    """A dracut base directory of symlinks to the cached one, with ramboot's module added (if asked)."""
    (base / "modules.d").mkdir(parents=True)
    for p in dracut.iterdir():
        if p.name != "modules.d":
            os.symlink(p, base / p.name)
    for p in (dracut / "modules.d").iterdir():
        os.symlink(p, base / "modules.d" / p.name)
    if not own_module:
        return base
    mine = base / "modules.d" / MODULE
    mine.mkdir()
    src = resources.files("ramboot.images") / "dracut-module"
    tpm = resources.files("ramboot.images") / "initramfs" / "tpm.sh"  # one TPM client for both initramfses
    for f in [*src.iterdir(), tpm]:
        if f.name.endswith(".sh"):
            (mine / f.name).write_bytes(f.read_bytes())
            os.chmod(mine / f.name, 0o755)
    return base
