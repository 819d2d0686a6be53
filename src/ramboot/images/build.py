"""`ramboot image build`: kernel + initramfs + root image + manifest, all or nothing.

Everything is written into a temporary directory beside the final one
(`DIR/images/.build-NAME-*`) and renamed into place only when complete, so a
failed or interrupted build leaves no half-written image behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from .errors import ImageError
from .initramfs import build_initramfs
from .kernel import resolve_kernel
from .manifest import INITRD, KERNEL, MANIFEST, ROOTFS, FileEntry, Manifest, images_dir, load_manifest
from .rootfs import LIVE_KINDS, Source, is_enospc, make_squashfs, parse_source, populate

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ImageError(f"bad image name {name!r}: letters, digits, '.', '_' and '-' only")
    return name


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_image(data_dir: Path, name: str, rootfs: str | None = None, kernel: str | None = None,
                initramfs: str = "ramboot", console: Console | None = None) -> Manifest:
    console = console or Console(stderr=True)
    check_name(name)
    if initramfs not in ("ramboot", "dracut"):
        raise ImageError(f"--initramfs {initramfs}: expected ramboot or dracut")
    started = time.monotonic()
    src = parse_source(rootfs)  # a bad source fails before anything is downloaded
    top = images_dir(data_dir)
    try:
        top.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=top))
    except OSError as e:
        raise ImageError(f"cannot write to {top}: {e.strerror}") from None
    try:
        k = resolve_kernel(kernel, console)
        out = work / "out"
        out.mkdir()
        if initramfs == "ramboot":
            with console.status("building the initramfs…"):
                build_initramfs(k, out / INITRD)
        else:
            from .dracut import build_dracut

            build_dracut(k, out / INITRD, console)
        shutil.copyfile(k.image, out / KERNEL)
        cloud_init = False  # a live medium's root is used as it is, unread
        if src.kind in LIVE_KINDS:
            root_image = _live_root(src, out / ROOTFS, console)
        else:
            tree = populate(src, work, console)
            make_squashfs(tree, out / ROOTFS, console)
            root_image = ""
            cloud_init = (tree / "usr/bin/cloud-init").exists()
        m = Manifest(
            name=name,
            source=src.text,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            kernel_version=k.version,
            initramfs=initramfs,
            kernel_source=k.source,
            source_member=src.member,
            root_image=root_image,
            cloud_init=cloud_init,
        )
        for fname in (KERNEL, INITRD, ROOTFS):
            m.files[fname] = FileEntry(size=(out / fname).stat().st_size, sha256=sha256_file(out / fname))
        m.build_seconds = time.monotonic() - started
        (out / MANIFEST).write_text(m.to_toml())
        _install(out, top / name, work)
        from .blobs import adopt

        adopt(data_dir, name)  # identical files (a kernel two images share) are stored once
        return m
    except OSError as e:
        if is_enospc(e):
            raise ImageError(f"no space left on device while building {name} in {top}") from None
        raise ImageError(f"building {name}: {e.strerror or e}: {e.filename or ''}".rstrip(": ")) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _live_root(src: Source, out: Path, console: Console) -> str:
    """A live squashfs, as it is, into `out`; the LiveOS filesystem image inside it, if any."""
    from .live import copy_squashfs, extract_iso_root, liveos_image

    if src.kind == "squashfs":
        copy_squashfs(Path(src.arg), out, console)
        where = f"--rootfs {src.text}"
    else:
        found = extract_iso_root(Path(src.arg), src.text, out, console)
        where = f"--rootfs {src.text}: {found.member}"
    inner = liveos_image(out, where)
    if inner:
        console.print(f"the root is {inner} inside the squashfs: it boots read-only on a loop device, "
                      "as dracut's dmsquash-live does")
    return inner


def _install(out: Path, final: Path, work: Path) -> None:
    """Swap the finished image into place; an older one with that name is replaced whole."""
    for p in out.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        old = work / "old"
        os.rename(final, old)
    os.rename(out, final)


def list_images(data_dir: Path) -> list[Manifest]:
    top = images_dir(data_dir)
    if not top.is_dir():
        return []
    return [load_manifest(data_dir, d.name) for d in sorted(top.iterdir())
            if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).is_file()]


def remove_image(data_dir: Path, name: str) -> None:
    check_name(name)
    d = images_dir(data_dir) / name
    if not (d / MANIFEST).is_file():
        raise ImageError(f"image {name!r} not found in {images_dir(data_dir)}")
    shutil.rmtree(d)


def verify_image(data_dir: Path, name: str) -> list[tuple[str, str]]:
    """Re-hash every file; (file, problem) for each drift, empty when all match."""
    check_name(name)
    m = load_manifest(data_dir, name)
    d = images_dir(data_dir) / name
    problems = []
    for fname, entry in sorted(m.files.items()):
        p = d / fname
        if not p.is_file():
            problems.append((fname, "missing"))
            continue
        size = p.stat().st_size
        if size != entry.size:
            problems.append((fname, f"size {size}, manifest says {entry.size}"))
            continue
        sha = sha256_file(p)
        if sha != entry.sha256:
            problems.append((fname, f"sha256 {sha}, manifest says {entry.sha256}"))
    return problems
