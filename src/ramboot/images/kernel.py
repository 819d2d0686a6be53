"""Kernels: from a path, from /boot + /lib/modules, from Debian's kernel packages, or from the root.

`debian` (the default) is the current cloud kernel (`linux-image-cloud-amd64`):
small, and enough for VMs. `debian:generic` is `linux-image-amd64`, which real
servers need; its initramfs then carries every Ethernet driver. Debian packages
are fetched with `apt-get download` (so apt's own sources, proxy and keys
apply) and unpacked with `dpkg-deb -x` into a cache — the host's own kernel
and /boot are never touched. `image` takes the kernel that the root filesystem
itself carries (`/boot/vmlinuz-V` with its `/lib/modules/V`), once the root is built.
"""

from __future__ import annotations

import fcntl
import gzip
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .errors import ImageError

DEBIAN_META = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
IMAGE = "image"  # `--kernel image`: the root's own kernel


@dataclass(frozen=True)
class Kernel:
    image: Path  # the bzImage
    version: str  # `uname -r`
    modules: Path  # .../lib/modules/VERSION, with modules.dep
    flavor: str  # cloud | generic: which NIC drivers the initramfs carries
    source: str  # as the user wrote it, for the manifest
    # The filesystem `modules` lives in: a root's own kernel (`image`) may be hostile, so
    # its module files and lists are resolved inside it (`module_file`), never on the host.
    root: Path = Path("/")

    def config_text(self) -> str:
        """The kernel's build config, when it ships one (tells us the initramfs compressions); else ''."""
        for p in (self.image.parent / f"config-{self.version}", self.modules / "config"):
            data = read_in_root(self.root, p) if p.is_relative_to(self.root) else None
            if data is not None:
                return data.decode(errors="replace")
        return ""

    def module_file(self, rel: str) -> bytes | None:
        """A file of the module tree named as modules.dep names it, read inside the kernel's root;
        None when absent. An absolute name or `..` is refused: a hostile modules.dep must not
        copy the build host's files into an initrd."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if rel.startswith("/") or ".." in parts or not parts:
            raise ImageError(f"kernel {self.version}: the module tree names {rel!r}: not a path inside it")
        return read_in_root(self.root, self.modules.joinpath(*parts))


def read_in_root(root: Path, path: Path) -> bytes | None:
    """The bytes of `path` (under `root`) with every symlink resolved as if `root` were `/`;
    None when it is absent. Only a regular file is read: a FIFO would hang the build, and a
    device node in a root would read the build host's device."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise ImageError(f"{path}: not inside {root}") from None
    real = in_root(root, str(rel))
    if real is None:
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"{path}: not a regular file (refused)")
        return f.read()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ramboot"


def resolve_kernel(spec: str | None, console: Console) -> Kernel:
    """`--kernel`: None/`debian`/`debian:cloud`, `debian:generic`, a file, a tree, or a version."""
    spec = spec or "debian"
    if spec == IMAGE:
        raise ImageError("--kernel image is taken from the root once it is built (build_image does that)")
    if spec == "debian" or spec.startswith("debian:"):
        flavor = spec.partition(":")[2] or "cloud"
        if flavor not in DEBIAN_META:
            raise ImageError(f"--kernel {spec}: unknown Debian kernel flavour {flavor!r} (cloud or generic)")
        return debian_kernel(flavor, spec, console)
    p = Path(spec)
    if p.is_dir():
        return _from_tree(p, spec)
    if p.is_file():
        if not os.access(p, os.R_OK):
            raise ImageError(f"--kernel {spec}: permission denied")
        version = bzimage_version(p)
        for base in (p.parent.parent, Path("/")):
            mods = base / "lib/modules" / version
            if mods.is_dir():
                return Kernel(p, version, _with_depmod(mods, version), _flavor(version), spec, base)
        raise ImageError(f"--kernel {spec}: no modules for kernel {version} (looked for lib/modules/{version} "
                         f"beside it and in /lib/modules)")
    if "/" not in spec and (Path("/boot") / f"vmlinuz-{spec}").is_file():
        mods = Path("/lib/modules") / spec
        if not mods.is_dir():
            raise ImageError(f"--kernel {spec}: /lib/modules/{spec} is missing")
        return Kernel(Path("/boot") / f"vmlinuz-{spec}", spec, _with_depmod(mods, spec), _flavor(spec), spec)
    raise ImageError(f"--kernel {spec}: not a file, a kernel tree, a version in /boot, debian, debian:generic "
                     "or image")


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Orders kernel versions numerically, part by part: 6.1.0-10 comes after 6.1.0-9."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d.+~-]+", version)]


def in_root(tree: Path, rel: str) -> Path | None:
    """`rel` under `tree`, following symlinks as if `tree` were `/` (Debian's `/lib -> usr/lib`); None if absent."""
    cur = tree
    todo = [p for p in rel.split("/") if p]
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            cur = cur.parent if cur != tree else tree
            continue
        nxt = cur / part
        if nxt.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = tree
            todo = [p for p in target.split("/") if p] + todo
            continue
        cur = nxt
    return cur if cur.exists() else None


def kernel_from_root(tree: Path, where: str, console: Console) -> Kernel:
    """`--kernel image`: the root's own `/boot/vmlinuz-V` with its `/lib/modules/V`; the newest if several."""
    boot = in_root(tree, "boot")
    found = []
    for p in sorted(boot.glob("vmlinuz-*")) if boot is not None and boot.is_dir() else []:
        real = in_root(tree, f"boot/{p.name}")
        if real is not None and real.is_file():
            found.append((p.name[len("vmlinuz-"):], real))
    if not found:
        raise ImageError(f"--kernel image: the root ({where}) has no kernel (no /boot/vmlinuz-*): "
                         "add one (e.g. debian:SUITE:linux-image-amd64) or give --kernel")
    found.sort(key=lambda vp: version_key(vp[0]))
    version, image = found[-1]
    if len(found) > 1:
        console.print(f"--kernel image: the root has {len(found)} kernels "
                      f"({', '.join(v for v, _ in found)}); taking the newest, {version}")
    mods = in_root(tree, f"lib/modules/{version}") or in_root(tree, f"usr/lib/modules/{version}")
    if mods is None or not mods.is_dir():
        raise ImageError(f"--kernel image: the root has /boot/vmlinuz-{version} but no /lib/modules/{version}")
    if not (mods / "modules.dep").is_file():
        raise ImageError(f"--kernel image: /lib/modules/{version} in the root has no modules.dep "
                         f"(run depmod {version} in the root)")
    return Kernel(image, version, mods, _flavor(version), IMAGE, tree)


MODULES_CHECKED = 8  # modules.dep's first entries: enough to tell another kernel's tree, cheap on a big one


def check_modules_match(k: Kernel) -> None:
    """Refuse a kernel whose modules were built for another: the kernel refuses to load them
    ("version magic"), so the node would come up without its NIC driver, far from the cause.

    The bzImage's own version must name the module tree, and the first modules of modules.dep
    must carry that version as their vermagic."""
    real = bzimage_version(k.image)
    if real != k.version:
        raise ImageError(f"kernel {k.image.name} is version {real}, but its modules are lib/modules/{k.version}: "
                         f"the node could load none of them; give the modules of {real} (or its kernel)")
    dep = k.module_file("modules.dep") or b""
    names = [ln.split(b":", 1)[0].decode(errors="replace") for ln in dep.splitlines() if b":" in ln]
    for rel in names[:MODULES_CHECKED]:
        data = k.module_file(rel)
        if data is None:
            continue  # a missing module is reported by the initramfs build, with what needs it
        magic = module_vermagic(data, rel)
        if magic.split(" ", 1)[0] != k.version:
            raise ImageError(f"kernel {k.version}: its module {rel} was built for {magic.split(' ', 1)[0] or '?'} "
                             f"(vermagic), so the kernel would refuse it: the modules do not match the kernel")


def module_vermagic(data: bytes, rel: str) -> str:
    """The vermagic string of a kernel module (.ko, .ko.xz, .ko.gz or .ko.zst); '' when it has none."""
    try:
        if rel.endswith(".xz"):
            data = lzma.decompress(data)
        elif rel.endswith(".gz"):
            data = gzip.decompress(data)
        elif rel.endswith(".zst"):
            proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True)
            if proc.returncode != 0:
                raise ValueError(proc.stderr.decode(errors="replace").strip())
            data = proc.stdout
    except (OSError, ValueError, EOFError, lzma.LZMAError) as e:
        raise ImageError(f"module {rel}: cannot decompress it ({e})") from None
    m = re.search(rb"(?:^|\0)vermagic=([^\0]*)", data)
    return m.group(1).decode(errors="replace").strip() if m else ""


def _flavor(version: str) -> str:
    return "cloud" if "cloud" in version else "generic"


def _from_tree(root: Path, spec: str) -> Kernel:
    """An unpacked kernel package: boot/vmlinuz-V and lib/modules/V."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise ImageError(f"--kernel {spec}: no boot/vmlinuz-* in that directory")
    img = images[-1]
    version = img.name[len("vmlinuz-"):]
    mods = root / "lib/modules" / version
    if not mods.is_dir():
        mods = root / "usr/lib/modules" / version
    if not mods.is_dir():
        raise ImageError(f"--kernel {spec}: no lib/modules/{version} beside boot/{img.name}")
    return Kernel(img, version, _with_depmod(mods, version), _flavor(version), spec, root)


def bzimage_version(path: Path) -> str:
    """The version string from an x86 bzImage's setup header (what `file` prints)."""
    with open(path, "rb") as f:
        head = f.read(0x4000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise ImageError(f"--kernel {path}: not an x86 bzImage kernel")
    off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    with open(path, "rb") as f:
        f.seek(off)
        raw = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    version = raw.split(" ", 1)[0]
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+_~-]*", version):
        raise ImageError(f"--kernel {path}: cannot read its version")
    return version


def _with_depmod(mods: Path, version: str) -> Path:
    if not (mods / "modules.dep").is_file():
        if not os.access(mods, os.W_OK):
            raise ImageError(f"{mods}: no modules.dep (run depmod {version})")
        _depmod(mods.parent.parent.parent, version)
    return mods


def _depmod(base: Path, version: str) -> None:
    depmod = shutil.which("depmod") or "/sbin/depmod"
    if not Path(depmod).exists():
        raise ImageError("depmod not found (Debian package kmod): run `make setup`")
    proc = subprocess.run([depmod, "-b", str(base), version], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"depmod failed for {version}: {proc.stderr.strip()}")


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise ImageError(f"{what}: {cmd[0]} not found (a Debian host with apt is needed)") from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        errs = [ln for ln in lines if ln.startswith("E:")] or lines[-1:] or [f"exit {proc.returncode}"]
        raise ImageError(f"{what}: {errs[0]}")
    return proc.stdout


def debian_package(flavor: str) -> tuple[str, str]:
    """The versioned package the metapackage currently depends on, and its candidate version."""
    meta = DEBIAN_META[flavor]
    out = _run(["apt-cache", "depends", meta], f"resolving {meta}")
    pkgs = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", out, re.M)
    if not pkgs:
        raise ImageError(f"resolving {meta}: apt knows no linux-image dependency (run apt-get update?)")
    pkg = pkgs[0]
    show = _run(["apt-cache", "policy", pkg], f"resolving {pkg}")
    m = re.search(r"Candidate:\s*(\S+)", show)
    if not m or m.group(1) == "(none)":
        raise ImageError(f"resolving {meta}: no installable version of {pkg}")
    return pkg, m.group(1)


def debian_kernel(flavor: str, spec: str, console: Console) -> Kernel:
    """Download and unpack the Debian kernel once; later builds reuse the cache."""
    pkg, version = debian_package(flavor)
    root = cache_dir() / "kernels"
    root.mkdir(parents=True, exist_ok=True)
    tree = root / f"{pkg}_{version}"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builds (and test workers) fetch it once
        if not (tree / ".complete").exists():
            _fetch_unpack(pkg, version, tree, root, console)
    kver = pkg[len("linux-image-"):]
    k = _from_tree(tree, spec)
    if k.version != kver:
        raise ImageError(f"{pkg}: unpacked kernel is {k.version}, expected {kver}")
    return Kernel(k.image, k.version, k.modules, flavor, spec, k.root)


def _fetch_unpack(pkg: str, version: str, tree: Path, root: Path, console: Console) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".dl-") as tmp:
        tmpd = Path(tmp)
        with console.status(f"downloading {pkg} {version}…"):
            _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{pkg}={version}"],
                 f"downloading {pkg}", cwd=tmpd)
        debs = list(tmpd.glob("*.deb"))
        if len(debs) != 1:
            raise ImageError(f"downloading {pkg}: apt-get produced no package")
        unpack = tmpd / "tree"
        with console.status(f"unpacking {pkg}…"):
            _run(["dpkg-deb", "-x", str(debs[0]), str(unpack)], f"unpacking {pkg}")
        kver = pkg[len("linux-image-"):]
        base = unpack if (unpack / "lib/modules" / kver).is_dir() else unpack / "usr"
        _depmod(base, kver)
        (unpack / ".complete").write_text(f"{pkg} {version}\n")
        if tree.exists():
            shutil.rmtree(tree)
        os.rename(unpack, tree)
