"""Root filesystems: a source becomes a directory tree, the tree a zstd squashfs.

Sources: a directory, a `.tar`/`.tar.gz` (`docker export`), `oci:PATH` (an OCI
image layout), `docker-archive:PATH` (`docker save`), `debian:SUITE[:pkg,...]`
(mmdebstrap), or nothing for the small built-in busybox root. Live media,
`squashfs:PATH` and `iso:PATH`, are already a squashfs: live.py takes them as
they are, with no tree and no rebuild.

Layers are applied by our own extractor rather than `tarfile.extractall`,
because layer semantics (whiteouts, opaque directories, replacing what a lower
layer left) and containment (no member may land outside the tree, not even
through a symlink a lower layer planted) are exactly what a generic extractor
gets wrong.

A layer is hostile input too (docs/images.md, "Hostile layers"): what the layers may
write is bounded (`Limits`: bytes, counted at each member's real size, so a sparse
or compressed member cannot expand past it, and entries), device nodes and FIFOs
are refused unless asked for, and setuid/setgid bits are kept only on files owned
by root.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .errors import ImageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SCHEMES = ("oci", "docker-archive", "debian", "squashfs", "iso")
LIVE_KINDS = ("squashfs", "iso")  # already a squashfs: copied, never rebuilt


def source_epoch() -> int:
    """SOURCE_DATE_EPOCH, or 0: every timestamp in the image is this one."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(raw))
    except ValueError:
        raise ImageError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer") from None


GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """What the layers of one build may put on the disk that also holds the data directory."""

    max_bytes: int = 64 * GiB  # regular files' real sizes, all layers together
    max_entries: int = 4_000_000  # files, directories, links and nodes, all layers together
    allow_devices: bool = False  # keep character/block device nodes and FIFOs (`--allow-devices`)


@dataclass
class Extracted:
    """What the layers wrote, against the limits."""

    bytes: int = 0
    entries: int = 0
    stripped: int = 0  # setuid/setgid bits taken off files not owned by root


@dataclass(frozen=True)
class Source:
    kind: str  # builtin | dir | tar | oci | docker-archive | debian | squashfs | iso
    arg: str
    text: str  # as the user wrote it, for the manifest
    member: str = ""  # iso: the squashfs inside the ISO that is the root (live/filesystem.squashfs, …)


def parse_source(text: str | None) -> Source:
    """Classify a `--rootfs` argument; a missing path or unknown scheme is an ImageError."""
    if not text:
        return Source("builtin", "", "builtin")
    scheme, sep, rest = text.partition(":")
    if sep and scheme in SCHEMES:
        if not rest:
            raise ImageError(f"--rootfs {text}: nothing after '{scheme}:'")
        if scheme == "debian":
            return Source("debian", rest, text)
        if scheme == "squashfs":
            from .live import check_squashfs_file

            check_squashfs_file(Path(rest), text)
        _readable(Path(rest), text)
        if scheme == "iso":
            from .live import find_iso_root

            return Source("iso", rest, text, find_iso_root(Path(rest), text).member)
        return Source(scheme, rest, text)
    p = Path(text)
    if not p.exists() and not p.is_symlink():
        if sep and "/" not in scheme and len(scheme) > 1:
            raise ImageError(
                f"--rootfs {text}: unknown scheme '{scheme}:' "
                "(expected a directory, .tar, .tar.gz, oci:PATH, docker-archive:PATH, debian:SUITE[:pkgs], "
                "squashfs:PATH or iso:PATH)"
            )
        raise ImageError(f"--rootfs {text}: no such file or directory")
    _readable(p, text)
    if p.is_dir():
        return Source("dir", str(p), text)
    try:
        is_tar = tarfile.is_tarfile(p)
    except OSError as e:
        raise ImageError(f"--rootfs {text}: cannot read: {e.strerror}") from None
    if not is_tar:
        raise ImageError(f"--rootfs {text}: not a directory or a tar archive")
    return Source("tar", str(p), text)


def _readable(p: Path, text: str) -> None:
    if not p.exists():
        raise ImageError(f"--rootfs {text}: no such file or directory: {p}")
    need = os.R_OK | (os.X_OK if p.is_dir() else 0)
    if not os.access(p, need):
        raise ImageError(f"--rootfs {text}: permission denied: {p}")


def populate(src: Source, workdir: Path, console: Console, limits: Limits | None = None,
             debs: tuple[Path, ...] = (), own: bool = False) -> Path:
    """The tree to squash: the source directory itself (a copy under workdir if `own`, to be
    changed), or one built under workdir; `debs` are local packages a Debian root gets too."""
    if src.kind == "dir" and not own:
        return Path(src.arg)
    tree = workdir / "tree"
    tree.mkdir(mode=0o755)
    os.chmod(tree, 0o755)
    limits = limits or Limits()
    done = Extracted()
    if src.kind == "builtin":
        builtin_tree(tree)
    elif src.kind == "dir":
        proc = subprocess.run(["cp", "-a", "--", f"{src.arg}/.", str(tree)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"copying {src.text}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    elif src.kind == "tar":
        with _progress(console) as prog:
            apply_layers(tree, [(Path(src.arg).name, lambda: open(src.arg, "rb"), None)], prog, limits, done)
    elif src.kind == "oci":
        with _progress(console) as prog:
            apply_layers(tree, oci_layers(Path(src.arg)), prog, limits, done)
    elif src.kind == "docker-archive":
        with _progress(console) as prog, tarfile.open(src.arg, "r:*") as outer:
            apply_layers(tree, docker_archive_layers(outer, src.arg), prog, limits, done)
    if done.stripped:
        console.print(f"{src.text}: took the setuid/setgid bits off {done.stripped} file(s) not owned by root")
    if src.kind == "debian":
        from .debian import bootstrap

        bootstrap(src.arg, tree, console, debs)
    return tree


def add_files(tree: Path, src: Path) -> None:
    """`image build --files DIR`: DIR's files, directories and symlinks laid over the root.

    The root's own symlinks on the way (a merged /usr's `/lib`, a hostile root's `etc -> /etc`)
    are followed inside the root, never on the build host; DIR's symlinks are copied as links."""
    if not src.is_dir():
        raise ImageError(f"--files {src}: not a directory")
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        here = _dir_in(tree, str(rel), src)
        for name in sorted(dirnames + filenames):
            s, d = Path(dirpath) / name, here / name
            st = s.lstat()
            if stat.S_ISDIR(st.st_mode):
                _dir_in(tree, str(rel / name), src, stat.S_IMODE(st.st_mode))
                continue
            if d.is_dir() and not d.is_symlink():
                raise ImageError(f"--files {src}: {rel / name} would replace a directory of the root")
            if d.is_symlink() or d.exists():
                d.unlink()
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(s, d)
            else:
                raise ImageError(f"--files {src}: {rel / name} is not a file, a directory or a symlink")


def _dir_in(tree: Path, rel: str, src: Path, mode: int = 0o755) -> Path:
    """Directory `rel` of the root, made where missing (`mkdir -p`), with every symlink on the
    way followed as if `tree` were `/`."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    here, hops = tree, 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            here = here.parent if here != tree else tree
            continue
        nxt = here / name
        if nxt.is_symlink():
            hops += 1
            if hops > 40:
                raise ImageError(f"--files {src}: {rel} goes through too many symlinks in the root")
            target = os.readlink(nxt)
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            here = tree if target.startswith("/") else here
            continue
        if not nxt.exists():
            nxt.mkdir(mode=mode)
        elif not nxt.is_dir():
            raise ImageError(f"--files {src}: {rel} is not a directory in the root")
        here = nxt
    return here


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


# --- the built-in busybox root ---------------------------------------------


def builtin_tree(tree: Path) -> None:
    """A small busybox root: init mounts the API filesystems, reports, and gives a shell."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise ImageError("the built-in root needs busybox-static (/bin/busybox): run `make setup`")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "proc", "sys", "dev", "run", "tmp", "root",
              "var/log"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / "tmp", 0o1777)
    os.chmod(tree / "root", 0o700)
    shutil.copyfile(busybox, tree / "bin/busybox")
    os.chmod(tree / "bin/busybox", 0o755)
    install_applets(tree)
    data = resources.files("ramboot.images") / "initramfs"
    files = {
        "etc/inittab": ("root-inittab", 0o644),
        "etc/init.d/rcS": ("root-rcS", 0o755),
        "usr/lib/ramboot/booted": ("booted", 0o755),
    }
    for dest, (name, mode) in files.items():
        (tree / dest).parent.mkdir(parents=True, exist_ok=True)
        (tree / dest).write_bytes((data / name).read_bytes())
        os.chmod(tree / dest, mode)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    (tree / "etc/hostname").write_text("ramboot\n")
    (tree / "etc/profile").write_text('export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nPS1="\\h:\\w# "\n')
    (tree / "etc/os-release").write_text('NAME="ramboot busybox"\nID=ramboot\n')


def busybox_applets(busybox: Path) -> list[str]:
    """Where busybox installs its applets (`bin/sh`, `usr/bin/wget`, …), sorted, busybox itself left out."""
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    return sorted(rel for rel in out.split() if rel != "bin/busybox")


def install_applets(tree: Path) -> None:
    """Symlink every busybox applet at build time, so the image never changes at boot."""
    for rel in busybox_applets(tree / "bin/busybox"):
        link = tree / rel
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)


# --- layered sources ---------------------------------------------------------

# (label, opener returning a binary stream, expected "sha256:..." digest or None)
Layer = tuple[str, Callable[[], IO[bytes]], str | None]


def oci_layers(layout: Path) -> list[Layer]:
    """The layers of an OCI image layout, bottom first, with their digests checked."""
    if not layout.is_dir():
        raise ImageError(f"oci:{layout}: not a directory (an OCI image layout has index.json and blobs/)")
    index = _json(layout / "index.json", f"oci:{layout}")
    manifest = _oci_pick(layout, index, f"oci:{layout}")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"oci:{layout}: the image manifest lists no layers")
    out: list[Layer] = []
    for i, desc in enumerate(layers):
        digest = desc.get("digest", "") if isinstance(desc, dict) else ""
        blob = _blob_path(layout, digest, f"oci:{layout}")
        out.append((f"layer {i + 1}/{len(layers)}", partial(_open_blob, blob), digest))
    return out


def _open_blob(path: Path) -> IO[bytes]:
    return open(path, "rb")


def _oci_pick(layout: Path, index: dict[str, Any], where: str, depth: int = 0) -> dict[str, Any]:
    """Follow an index (possibly nested) to one linux/amd64 image manifest."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{where}: index lists no manifests")
    if depth > 4:
        raise ImageError(f"{where}: indexes nest too deeply")

    def platform_ok(m: dict[str, Any]) -> bool:
        p = m.get("platform") or {}
        return bool(p.get("os", "linux") == "linux" and p.get("architecture", "amd64") == "amd64")

    chosen = next((m for m in manifests if isinstance(m, dict) and platform_ok(m)), None)
    if chosen is None:
        raise ImageError(f"{where}: no linux/amd64 image in the index")
    doc = _json(_blob_path(layout, chosen.get("digest", ""), where), where)
    if "manifests" in doc:
        return _oci_pick(layout, doc, where, depth + 1)
    return doc


def _blob_path(layout: Path, digest: str, where: str) -> Path:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ImageError(f"{where}: bad digest {digest!r}")
    p = layout / "blobs" / "sha256" / hexd
    if not p.is_file():
        raise ImageError(f"{where}: missing blob {digest}")
    return p


def _json(path: Path, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ImageError(f"{where}: missing {path.name}") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"{where}: unreadable {path.name}: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{where}: {path.name} is not a JSON object")
    return doc


def docker_archive_layers(outer: tarfile.TarFile, where: str) -> list[Layer]:
    """The layers of a `docker save` archive, bottom first, read in place."""
    where = f"docker-archive:{where}"
    try:
        raw = outer.extractfile("manifest.json")
    except KeyError:
        raise ImageError(f"{where}: no manifest.json (not a `docker save` archive)") from None
    try:
        doc = json.loads(raw.read()) if raw else None
    except ValueError as e:
        raise ImageError(f"{where}: unreadable manifest.json: {e}") from None
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise ImageError(f"{where}: manifest.json lists no image")
    names = doc[0].get("Layers")
    if not isinstance(names, list):
        raise ImageError(f"{where}: manifest.json lists no layers")
    out: list[Layer] = []
    for i, name in enumerate(names):
        try:
            member = outer.getmember(str(name))
        except KeyError:
            raise ImageError(f"{where}: missing layer {name}") from None

        def opener(m: tarfile.TarInfo = member, n: object = name) -> IO[bytes]:
            f = outer.extractfile(m)
            if f is None:
                raise ImageError(f"{where}: layer {n} is not a file")
            return f

        out.append((f"layer {i + 1}/{len(names)}", opener, None))
    return out


class _Reader(io.RawIOBase):
    """Counts (for progress) and hashes (for the digest) what the tar reader consumes."""

    def __init__(self, raw: IO[bytes], advance: Callable[[int], None]):
        self.raw, self.advance, self.sha = raw, advance, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer) -> int:
        view = memoryview(buf)
        data = self.raw.read(len(view))
        n = len(data)
        view[:n] = data
        self.sha.update(data)
        self.advance(n)
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _size_of(f: IO[bytes]) -> int | None:
    try:
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


def apply_layers(tree: Path, layers: Iterable[Layer], prog: Progress, limits: Limits | None = None,
                 done: Extracted | None = None) -> Extracted:
    """Apply `layers` bottom first; `done` counts across calls (one build), against `limits`."""
    limits, done = limits or Limits(), done or Extracted()
    for label, opener, digest in layers:
        with opener() as raw:
            task = prog.add_task(label, total=_size_of(raw))
            reader = _Reader(raw, partial(prog.advance, task))
            _apply_stream(tree, io.BufferedReader(reader, 1 << 20), label, limits, done)
            reader.drain()
            if digest and "sha256:" + reader.sha.hexdigest() != digest:
                raise ImageError(f"{label}: blob {digest} is corrupt (its sha256 differs)")
            prog.update(task, visible=False)
    return done


def _apply_stream(tree: Path, stream: IO[bytes], label: str, limits: Limits, done: Extracted) -> None:
    head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
    if head == ZSTD_MAGIC:
        proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None  # both PIPE
        feeder = threading.Thread(target=_feed, args=(stream, proc.stdin), daemon=True)
        feeder.start()
        try:
            _apply_tar(tree, proc.stdout, label, limits, done)
        finally:
            proc.stdout.close()
            feeder.join()
            if proc.wait() != 0:
                raise ImageError(f"{label}: zstd could not decompress the layer")
    else:
        _apply_tar(tree, stream, label, limits, done)


def _feed(src: IO[bytes], dst: IO[bytes]) -> None:
    try:
        shutil.copyfileobj(src, dst, 1 << 20)
    except (BrokenPipeError, ValueError):
        pass
    finally:
        try:
            dst.close()
        except BrokenPipeError:
            pass


# A long name or a pax header is read into memory whole: a bigger one is a bomb, not a name.
META_MAX = 1 << 20


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose long-name and pax records are refused past META_MAX bytes."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        meta = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)
        if self.type in meta and self.size > META_MAX:
            # tarfile's own error for a bad extended header; typeshed leaves it and _proc_member out
            raise tarfile.SubsequentHeaderError(  # type: ignore[attr-defined]
                f"a {self.size}-byte name or pax header (at most {META_MAX})")
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


def _apply_tar(tree: Path, stream: IO[bytes], label: str, limits: Limits | None = None,
               done: Extracted | None = None) -> None:
    try:
        tf = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_BoundedTarInfo)
    except tarfile.TarError as e:
        raise ImageError(f"{label}: not a tar archive: {e}") from None
    layer = _LayerWriter(tree, label, limits or Limits(), done or Extracted())
    try:
        for m in tf:
            layer.member(m, tf)
    except tarfile.TarError as e:
        raise ImageError(f"{label}: damaged tar archive: {e}") from None


class _LayerWriter:
    """Applies one layer's members onto the tree, in the archive's order."""

    def __init__(self, tree: Path, label: str, limits: Limits, done: Extracted):
        self.tree = tree
        self.label = label
        self.limits, self.done = limits, done
        self.written: set[str] = set()  # paths this layer created (opaque dirs keep them)

    def refuse(self, name: str, why: str) -> ImageError:
        return ImageError(f"{self.label}: refusing hostile member {name!r}: {why}")

    def parts(self, name: str) -> list[str]:
        if name.startswith("/"):
            raise self.refuse(name, "absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "'..' in the path")
        return parts

    def resolve_dir(self, name: str, parts: list[str]) -> Path:
        """The real directory for `parts`, following symlinks as if chrooted in the tree.

        A symlink that climbs out of the tree is hostile: it is refused, never followed.
        """
        done: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            p = todo.pop(0)
            if p in ("", "."):
                continue
            if p == "..":
                if not done:
                    raise self.refuse(name, "a symlink on its path leads out of the root")
                done.pop()
                continue
            cand = self.tree.joinpath(*done, p)
            if cand.is_symlink():
                hops += 1
                if hops > 40:
                    raise self.refuse(name, "too many symlinks on its path")
                target = os.readlink(cand)
                if target.startswith("/"):
                    done = []
                todo = target.split("/") + todo
                continue
            done.append(p)
        d = self.tree.joinpath(*done)
        if d.exists() and not d.is_dir():
            raise ImageError(f"{self.label}: {name!r}: {'/'.join(done)} is not a directory")
        return d

    def member(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        parts = self.parts(m.name)
        if not parts:  # the root itself
            self.meta(self.tree, m)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT):
            parent = self.resolve_dir(m.name, parts[:-1])
            if base == OPAQUE:
                self.opaque(parent)
            elif not base.startswith(WHITEOUT + WHITEOUT):  # other .wh..wh. markers carry nothing
                self.remove(parent / base[len(WHITEOUT):])
            return
        self.check(m)
        parent = self.resolve_dir(m.name, parts[:-1])
        parent.mkdir(parents=True, exist_ok=True)
        dst = parent / base
        self.written.add(str(dst))
        if m.isdir():
            if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                self.remove(dst)
            dst.mkdir(exist_ok=True)
            self.meta(dst, m)
            return
        if dst.is_symlink() or dst.exists():
            self.remove(dst)
        if m.isreg():
            src = tf.extractfile(m)
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)  # type: ignore[arg-type]
        elif m.issym():
            if not m.linkname or "\0" in m.linkname:
                raise self.refuse(m.name, "symlink with an empty target")
            os.symlink(m.linkname, dst)
        elif m.islnk():
            lparts = self.parts(m.linkname)
            if not lparts:
                raise self.refuse(m.name, "hard link to the root")
            target = self.resolve_dir(m.linkname, lparts[:-1]) / lparts[-1]
            if not (target.is_symlink() or target.exists()):
                raise ImageError(f"{self.label}: hard link {m.name!r} to missing {m.linkname!r}")
            os.link(target, dst, follow_symlinks=False)
            return
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(dst, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(dst, 0o600)
        else:
            raise ImageError(f"{self.label}: {m.name!r}: unsupported tar member type {m.type!r}")
        self.meta(dst, m)

    def check(self, m: tarfile.TarInfo) -> None:
        """Count the member against the limits (a regular file at its real, expanded size);
        refuse a device node or FIFO not asked for, and a world-writable setuid/setgid file."""
        self.done.entries += 1
        if self.done.entries > self.limits.max_entries:
            raise ImageError(f"{self.label}: {m.name!r}: the layers hold more than {self.limits.max_entries} "
                             "entries: refused (--max-root-entries raises it)")
        if m.isreg():
            self.done.bytes += m.size
            if self.done.bytes > self.limits.max_bytes:
                raise ImageError(f"{self.label}: {m.name!r} ({m.size} bytes{', sparse' if m.issparse() else ''}): "
                                 f"the layers would write more than {self.limits.max_bytes} bytes: refused "
                                 "(--max-root-size raises it)")
            if m.mode & 0o6000 and m.mode & 0o002:
                raise self.refuse(m.name, "a world-writable setuid/setgid file")
        if (m.ischr() or m.isblk() or m.isfifo()) and not self.limits.allow_devices:
            what = "a FIFO" if m.isfifo() else \
                f"a {'character' if m.ischr() else 'block'} device node ({m.devmajor}:{m.devminor})"
            raise ImageError(f"{self.label}: refusing {m.name!r}, {what}: --allow-devices keeps device nodes "
                             "and FIFOs")

    def meta(self, dst: Path, m: tarfile.TarInfo) -> None:
        os.lchown(dst, m.uid, m.gid)
        mode = m.mode & 0o7777
        if m.isreg() and mode & 0o6000 and m.uid != 0:
            mode &= ~0o6000  # only root's files keep them, as in every distribution's root
            self.done.stripped += 1
        if not m.issym():
            os.chmod(dst, mode)
        for key, value in (m.pax_headers or {}).items():
            if key.startswith("SCHILY.xattr."):
                try:
                    os.setxattr(dst, key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
                except OSError:
                    pass  # a filesystem without that xattr namespace: the file itself still counts

    def remove(self, p: Path) -> None:
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)

    def opaque(self, d: Path) -> None:
        """Hide everything lower layers put under d; keep what this layer wrote."""
        for dirpath, dirnames, filenames in os.walk(d):
            for n in filenames:
                p = os.path.join(dirpath, n)
                if p not in self.written:
                    self.remove(Path(p))
            keep = []
            for n in dirnames:
                p = os.path.join(dirpath, n)
                if p in self.written:
                    keep.append(n)
                else:
                    self.remove(Path(p))
            dirnames[:] = keep


# --- squashfs ---------------------------------------------------------------


def make_squashfs(tree: Path, out: Path, console: Console, exclude: tuple[str, ...] = ()) -> None:
    """zstd squashfs with every timestamp fixed: the same tree gives the same bytes.

    `exclude`: wildcards relative to the tree (mksquashfs -wildcards -e) left out of it.
    """
    if shutil.which("mksquashfs") is None:
        raise ImageError("mksquashfs not found (Debian package squashfs-tools): run `make setup`")
    epoch = str(source_epoch())
    cmd = ["mksquashfs", str(tree), str(out), "-noappend", "-comp", "zstd", "-all-time", epoch,
           "-mkfs-time", epoch, "-quiet", "-no-progress"]
    if exclude:
        cmd += ["-wildcards", "-e", *exclude]
    with console.status(f"squashing {tree.name}…"):
        # mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times: we pass ours explicitly.
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = msg[-1] if msg else f"exit {proc.returncode}"
        if "No space left" in proc.stderr + proc.stdout:
            raise ImageError(f"no space left on device while writing {out}")
        raise ImageError(f"mksquashfs failed: {last}")


def is_enospc(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC
