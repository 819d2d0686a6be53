"""The kernel's modules as a second read-only layer of the node's root.

A root built from a container or the built-in busybox tree has no
`/lib/modules/$(uname -r)`, so nothing could be loaded once the root is up. The
kernel's whole module tree goes into `modules.squashfs` (zstd), which the
initramfs downloads next to the root image, checks by sha256 and mounts as the
lowest layer of the root's overlay. It is built once per kernel, content-addressed like every image file: one blob in
`DATA/blobs/sha256/` (blobs.py), hard-linked into every image that uses that
kernel, and listed in each image's manifest.

The tree is there twice, as `lib/modules/V` and as `usr/lib/modules/V` (hard
links: stored once). A merged-/usr root's `/lib` is a symlink to `usr/lib`, which
hides a lower layer's `lib` directory; a root with a real `/lib` sees the other
copy. Either way `/lib/modules/$(uname -r)` holds every module, and kmod built
for `/usr/lib/modules` finds them too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from rich.console import Console

from .blobs import blob_path
from .errors import ImageError
from .kernel import IMAGE, Kernel, cache_dir, in_root
from .manifest import FileEntry, sha256_file
from .rootfs import make_squashfs

LAYOUT = "1"  # bump when the layer's layout changes: old cached layers are then rebuilt


def root_has_modules(tree: Path, version: str) -> bool:
    """Does a root tree carry this kernel's modules itself (so it needs no layer)?"""
    for rel in (f"lib/modules/{version}", f"usr/lib/modules/{version}"):
        d = in_root(tree, rel)
        if d is not None and (d / "modules.dep").is_file():
            return True
    return False


def squashfs_has_modules(image: Path, version: str) -> bool:
    """Does a root squashfs (live media, used as it is) carry this kernel's modules.dep itself?"""
    want = [f"lib/modules/{version}/modules.dep", f"usr/lib/modules/{version}/modules.dep"]
    proc = subprocess.run(["unsquashfs", "-no-progress", "-lc", "-d", "", str(image), *want],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})
    listed = {ln.strip().lstrip("/") for ln in proc.stdout.splitlines()}
    return proc.returncode == 0 and any(w in listed for w in want)


def fingerprint(k: Kernel) -> str:
    """What the layer is made of: the version and every file's path, size and mtime.

    A root's own kernel (`--kernel image`) sets its files' mtimes itself, so it could
    pass for a trusted kernel of the same version and have its layer served in that
    one's place (the cache is shared per kernel): its files' contents count too.
    """
    h = hashlib.sha256(f"layout {LAYOUT}\nversion {k.version}\nsource {k.source}\n".encode())
    for dirpath, dirnames, filenames in os.walk(k.modules):
        dirnames.sort()
        for n in sorted(filenames):
            p = Path(dirpath) / n
            st = p.lstat()
            h.update(f"{p.relative_to(k.modules)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if k.source == IMAGE and stat.S_ISREG(st.st_mode):
                h.update(sha256_file(p).encode())
    return h.hexdigest()[:32]


def modules_layer(k: Kernel, data_dir: Path, console: Console) -> tuple[Path, FileEntry]:
    """The content-addressed layer for kernel `k` (its blob), built (or taken from the cache) once."""
    if k.module_file("modules.dep") is None:
        raise ImageError(f"kernel {k.version}: {k.modules} has no modules.dep")
    cache = cache_dir() / "modules"
    cache.mkdir(parents=True, exist_ok=True)
    key = fingerprint(k)
    built, sumfile = cache / f"{k.version}-{key}.squashfs", cache / f"{k.version}-{key}.sha256"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builds (and test workers) build it once
        if not (built.is_file() and sumfile.is_file()):
            _build(k, built, sumfile, console)
    sha = sumfile.read_text().strip()
    entry = FileEntry(size=built.stat().st_size, sha256=sha)
    dest = blob_path(data_dir, sha)
    store = dest.parent
    store.mkdir(parents=True, exist_ok=True)
    if not dest.is_file():
        fd, tmp = tempfile.mkstemp(dir=store, prefix=".in-")
        os.close(fd)
        try:
            shutil.copyfile(built, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return dest, entry


def _build(k: Kernel, out: Path, sumfile: Path, console: Console) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".mk-") as tmp:
        tree = Path(tmp) / "tree"
        for rel in (f"lib/modules/{k.version}", f"usr/lib/modules/{k.version}"):
            _link_tree(k.modules, tree / rel)
        part = Path(tmp) / "modules.squashfs"
        with console.status(f"squashing the modules of {k.version}…"):
            make_squashfs(tree, part, Console(quiet=True))
        sha = sha256_file(part)
        os.chmod(part, 0o644)
        os.rename(part, out)
        sumfile.write_text(sha + "\n")


def _link_tree(src: Path, dest: Path) -> None:
    """A copy of `src` at `dest` made of hard links where the filesystem allows (else copies)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(dest / rel, 0o755)
        for n in filenames:
            s, d = Path(dirpath) / n, dest / rel / n
            if s.is_symlink():  # kept as a link, resolved on the node inside its root, never here
                os.symlink(os.readlink(s), d)
                continue
            if not stat.S_ISREG(s.lstat().st_mode):
                raise ImageError(f"{s}: not a regular file, a directory or a symlink: refused in a module tree")
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)
        for n in dirnames:
            if (Path(dirpath) / n).is_symlink():  # os.walk lists a symlink to a directory here
                os.symlink(os.readlink(Path(dirpath) / n), dest / rel / n)
        dirnames[:] = [n for n in dirnames if not (Path(dirpath) / n).is_symlink()]
