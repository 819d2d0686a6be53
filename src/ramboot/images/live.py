"""Live media as root filesystems: an existing squashfs, or the one inside a live ISO.

`squashfs:PATH` is used as it is: copied into the image byte for byte, never
rebuilt, so its sha256 is the one its distribution published.

`iso:PATH` reads a distribution's live ISO with pycdlib (nothing is mounted on
the build host) and streams its root squashfs into the image:

- Debian Live: `live/filesystem.squashfs`;
- Fedora (and other dracut dmsquash-live media): `LiveOS/squashfs.img`;
- Ubuntu (casper): `casper/filesystem.squashfs` when the ISO has it (the older
  desktop ISOs). Newer desktop ISOs and the server ISOs have *layered* squashfs
  files instead, named by their chain: `minimal.squashfs`, then
  `minimal.standard.squashfs` on top of it, then `minimal.standard.live.squashfs`
  (the installer session) on top of that. Only the bottom layer is a whole root
  by itself (an upper layer alone has no `/bin`), so that is the one taken: the
  base of the chain (the shortest name that every other layer extends), the
  largest base if the ISO holds more than one chain.

Names are read through the richest directory tree the ISO has: Rock Ridge, then
Joliet, then UDF, then plain ISO 9660 (where `filesystem.squashfs` may be
`FILESYST.SQU;1`, level 1's 8.3 form, and is matched as such).

A squashfs whose root holds `LiveOS/rootfs.img` (or the older `LiveOS/ext3fs.img`)
is a dmsquash-live image: the squashfs is only a wrapper, and the root is that
ext4 filesystem image. The build records it in the manifest (`root_image`), and
ramboot's initramfs finds it at boot by itself and mounts it read-only on a loop
device as the lower layer of the tmpfs overlay.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .errors import ImageError

if TYPE_CHECKING:
    from pycdlib import PyCdlib

SQUASHFS_MAGIC = b"hsqs"  # 0x73717368, little-endian: every squashfs 4 image starts with it
EROFS_MAGIC = b"\xe2\xe1\xf5\xe0"  # 0xE0F5E1E2 at offset 1024
LIVEOS_IMAGES = ("LiveOS/rootfs.img", "LiveOS/ext3fs.img")  # dmsquash-live's names, in the order it tries them


def check_squashfs_head(head: bytes, where: str) -> None:
    """`head` is the first 1028+ bytes of a file that should be a squashfs; one line if it is not."""
    if head[:4] == SQUASHFS_MAGIC:
        if len(head) >= 30 and int.from_bytes(head[28:30], "little") != 4:
            raise ImageError(f"{where}: squashfs version {int.from_bytes(head[28:30], 'little')}, "
                             "but Linux mounts only version 4")
        return
    if head[1024:1028] == EROFS_MAGIC:
        raise ImageError(f"{where}: an EROFS image, not a squashfs (ramboot boots squashfs roots)")
    raise ImageError(f"{where}: not a squashfs (no 'hsqs' magic at its start)")


def check_squashfs_file(path: Path, text: str) -> None:
    """`--rootfs squashfs:PATH`: an existing, readable squashfs file, else one line."""
    where = f"--rootfs {text}"
    if not path.exists():
        raise ImageError(f"{where}: no such file: {path}")
    if path.is_dir():
        raise ImageError(f"{where}: {path} is a directory, not a squashfs file (give the directory as --rootfs DIR)")
    try:
        with open(path, "rb") as f:
            head = f.read(1028)
    except OSError as e:
        raise ImageError(f"{where}: cannot read {path}: {e.strerror}") from None
    check_squashfs_head(head, where)


# --- live ISOs ---------------------------------------------------------------


@dataclass(frozen=True)
class IsoRoot:
    """Where an ISO's root squashfs is: the pycdlib path keyword, the path in that tree, and what it is."""

    key: str  # rr_path | joliet_path | udf_path | iso_path
    path: str  # as that tree spells it, e.g. /live/filesystem.squashfs or /LIVE/FILESYST.SQU;1
    member: str  # the distribution's own name for it, e.g. live/filesystem.squashfs
    layout: str  # debian-live | fedora-liveos | ubuntu-casper
    size: int


def _plain(name: str) -> str:
    """An ISO 9660 identifier without its version (`;1`) or the dot of an empty extension, lower case."""
    name = name.split(";", 1)[0]
    if name.endswith("."):
        name = name[:-1]
    return name.lower()


def _level1(name: str) -> str:
    """What ISO 9660 level 1 (8.3, d-characters) makes of a name, lower case, for matching."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""

    def d(s: str) -> str:
        return "".join(c if c.isalnum() or c == "_" else "_" for c in s.lower())

    return d(stem)[:8] + ("." + d(ext)[:3] if ext else "")


def _matches(found: str, wanted: str) -> bool:
    f = _plain(found)
    return f == wanted.lower() or f == _level1(wanted)


def _open_iso(path: Path, text: str) -> PyCdlib:
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except PyCdlibException as e:
        raise ImageError(f"--rootfs {text}: not a readable ISO 9660 image: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ImageError(f"--rootfs {text}: cannot read {path}: {e.strerror}") from None
    return iso


def _trees(iso: PyCdlib) -> list[str]:
    keys = []
    if iso.has_rock_ridge():
        keys.append("rr_path")
    if iso.has_joliet():
        keys.append("joliet_path")
    if iso.has_udf():
        keys.append("udf_path")
    keys.append("iso_path")
    return keys


def _listing(iso: PyCdlib, key: str) -> dict[str, list[str]]:
    """{top-level directory as spelled: [its file names]} for live/, LiveOS/ and casper/ only."""
    out: dict[str, list[str]] = {}
    for depth, (here, dirs, files) in enumerate(iso.walk(**{key: "/"})):
        if depth == 0:
            dirs[:] = [d for d in dirs if _plain(d) in ("live", "liveos", "casper")]
            continue
        out[here.rstrip("/").rsplit("/", 1)[-1]] = files
        dirs[:] = []
    return out


def _size(iso: PyCdlib, key: str, path: str) -> int:
    return int(iso.get_record(**{key: path}).get_data_length())


def _casper_pick(names: list[str], sizes: dict[str, int]) -> str | None:
    """filesystem.squashfs, else the base of the layer chain (see the module's doc)."""
    sq = {n: _plain(n)[: -len(".squashfs")] for n in names if _plain(n).endswith(".squashfs")}
    for n, stem in sq.items():
        if stem == "filesystem":
            return n
    if not sq:  # plain ISO 9660 level 1: casper layers are only *.SQU there, names mangled
        sq = {n: _plain(n)[:-4] for n in names if _plain(n).endswith(".squ")}
    if not sq:
        return None
    stems = set(sq.values())
    bases = [n for n, stem in sq.items()
             if not any(stem.startswith(other + ".") for other in stems if other != stem)]
    return max(bases, key=lambda n: (sizes.get(n, 0), n))


def find_iso_root(path: Path, text: str) -> IsoRoot:
    """The root squashfs of a live ISO, or one line saying why there is none."""
    where = f"--rootfs {text}"
    if not path.exists():
        raise ImageError(f"{where}: no such file: {path}")
    if path.is_dir():
        raise ImageError(f"{where}: {path} is a directory, not an ISO image")
    from pycdlib.pycdlibexception import PyCdlibException

    iso = _open_iso(path, text)
    try:
        for key in _trees(iso):
            try:
                tops = _listing(iso, key)
            except (PyCdlibException, UnicodeDecodeError):  # a damaged or oddly encoded tree: try the next
                continue
            found = _pick(iso, key, tops)
            if found is None:
                continue
            with iso.open_file_from_iso(**{key: found.path}) as f:
                head = f.read(1028)
            check_squashfs_head(head, f"{where}: {found.member}")
            return found
    finally:
        iso.close()
    raise ImageError(f"{where}: no live root in this ISO (looked for live/filesystem.squashfs, "
                     "LiveOS/squashfs.img and casper/*.squashfs)")


# The single-file layouts, in the order they are looked for: (directory, file, member, kind).
_SINGLE = (("live", "filesystem.squashfs", "live/filesystem.squashfs", "debian-live"),
           ("liveos", "squashfs.img", "LiveOS/squashfs.img", "fedora-liveos"))


def _pick(iso: PyCdlib, key: str, tops: dict[str, list[str]]) -> IsoRoot | None:
    def full(d: str, n: str) -> str:
        return f"/{d}/{n}"

    for top, fname, member, kind in _SINGLE:
        for d, files in tops.items():
            if _plain(d) == top:
                for n in files:
                    if _matches(n, fname):
                        p = full(d, n)
                        return IsoRoot(key, p, member, kind, _size(iso, key, p))
    for d, files in tops.items():
        if _plain(d) == "casper":
            sizes = {n: _size(iso, key, full(d, n)) for n in files
                     if _plain(n).endswith((".squashfs", ".squ"))}
            base = _casper_pick(files, sizes)
            if base is not None:
                p = full(d, base)
                member = "casper/" + _plain(base)
                return IsoRoot(key, p, member, "ubuntu-casper", sizes[base])
    return None


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def copy_stream(src: IO[bytes], out: Path, total: int | None, label: str, console: Console) -> None:
    with _progress(console) as prog, open(out, "wb") as dst:
        task = prog.add_task(label, total=total)
        while chunk := src.read(1 << 20):
            dst.write(chunk)
            prog.advance(task, len(chunk))


def extract_iso_root(path: Path, text: str, out: Path, console: Console) -> IsoRoot:
    """Stream the ISO's root squashfs into `out` (never the whole ISO in memory, nothing mounted)."""
    found = find_iso_root(path, text)
    iso = _open_iso(path, text)
    try:
        with iso.open_file_from_iso(**{found.key: found.path}) as f:
            copy_stream(f, out, found.size, f"{found.member} from {path.name}", console)
    finally:
        iso.close()
    if out.stat().st_size != found.size:
        raise ImageError(f"--rootfs {text}: {found.member} came out {out.stat().st_size} bytes, "
                         f"the ISO says {found.size}")
    return found


def copy_squashfs(path: Path, out: Path, console: Console) -> None:
    with console.status(f"copying {path.name}…"):
        shutil.copyfile(path, out)


# --- what the squashfs holds ---------------------------------------------------


def liveos_image(squashfs: Path, where: str) -> str:
    """`LiveOS/rootfs.img` or `LiveOS/ext3fs.img` if the squashfs is a dmsquash-live wrapper, else ''.

    Read with unsquashfs's listing (restricted to those two paths, so a big root
    is not walked), which also proves the squashfs is readable, not just its magic.
    """
    if shutil.which("unsquashfs") is None:
        raise ImageError("unsquashfs not found (Debian package squashfs-tools): run `make setup`")
    proc = subprocess.run(["unsquashfs", "-no-progress", "-lc", "-d", "", str(squashfs), *LIVEOS_IMAGES],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise ImageError(f"{where}: unsquashfs cannot read it: {msg[-1] if msg else f'exit {proc.returncode}'}")
    listed = {ln.strip().lstrip("/") for ln in proc.stdout.splitlines()}
    return next((p for p in LIVEOS_IMAGES if p in listed), "")
