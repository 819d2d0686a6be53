"""`ramboot image build`: kernel + initramfs + root image + manifest, all or nothing.

Everything is written into a temporary directory beside the final one
(`DIR/images/.build-NAME-*`) and renamed into place only when complete, so a
failed or interrupted build leaves no half-written image behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from .errors import ImageError
from .initramfs import build_initramfs
from .kernel import IMAGE, Kernel, check_modules_match, kernel_from_root, resolve_kernel
from .manifest import (
    INITRD,
    KERNEL,
    MANIFEST,
    MODULES,
    NAME_RE,
    ROOTFS,
    FileEntry,
    Manifest,
    images_dir,
    load_manifest,
    sha256_file,
)
from .rootcheck import check_root
from .rootfs import LIVE_KINDS, Limits, Source, add_files, is_enospc, make_squashfs, parse_source, populate
from .secureboot import kernel_signature


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ImageError(f"bad image name {name!r}: letters, digits, '.', '_' and '-' only")
    return name


def build_image(data_dir: Path, name: str, rootfs: str | None = None, kernel: str | None = None,
                initramfs: str = "ramboot", console: Console | None = None, limits: Limits | None = None,
                autologin: bool = False, debs: tuple[Path, ...] = (), files: Path | None = None) -> Manifest:
    console = console or Console(stderr=True)
    check_name(name)
    if initramfs not in ("ramboot", "dracut"):
        raise ImageError(f"--initramfs {initramfs}: expected ramboot or dracut")
    started = time.monotonic()
    src = parse_source(rootfs)  # a bad source fails before anything is downloaded
    if autologin and src.kind != "debian":
        raise ImageError("--autologin: only for the Debian roots ramboot builds (--rootfs debian:SUITE[:pkgs])")
    if debs and src.kind != "debian":
        raise ImageError("--deb: only for the Debian roots ramboot builds (--rootfs debian:SUITE[:pkgs])")
    if files is not None and src.kind in LIVE_KINDS:
        raise ImageError(f"--files: the root of --rootfs {src.text} is used as it is (live media); "
                         "--files needs a directory, an archive or debian:")
    if files is not None and not files.is_dir():
        raise ImageError(f"--files {files}: not a directory")
    top = images_dir(data_dir)
    try:
        top.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=top))
    except OSError as e:
        raise ImageError(f"cannot write to {top}: {e.strerror}") from None
    try:
        # `--kernel image` comes from the root, so the root is made first; any other
        # kernel is resolved first, so a bad one fails before a long bootstrap.
        k = None if kernel == IMAGE else resolve_kernel(kernel, console)
        if k is not None:
            check_modules_match(k)
        out = work / "out"
        out.mkdir()
        tree: Path | None = None
        if src.kind in LIVE_KINDS:
            root_image = _live_root(src, out / ROOTFS, console)
            if k is None:
                k = _live_kernel(src, out / ROOTFS, root_image, work, console)
                check_modules_match(k)
        else:
            tree = populate(src, work, console, limits, debs, own=files is not None)
            if files is not None:
                add_files(tree, files)
            check_root(tree, initramfs)
            if autologin:
                from .debian import autologin as with_autologin

                with_autologin(tree)
            root_image = ""
            if k is None:
                k = kernel_from_root(tree, src.text, console)
                check_modules_match(k)
        if initramfs == "ramboot":
            with console.status("building the initramfs…"):
                build_initramfs(k, out / INITRD)
        else:
            from .dracut import build_dracut

            build_dracut(k, out / INITRD, console)
        shutil.copyfile(k.image, out / KERNEL)
        sig = kernel_signature(out / KERNEL)
        cloud_init = False  # a live medium's root is used as it is, unread
        if tree is not None:
            # With the root's own kernel, its initrd is ramboot's now: leave the root's out (RAM).
            make_squashfs(tree, out / ROOTFS, console, exclude=("boot/initrd.img-*",) if kernel == IMAGE else ())
            cloud_init = (tree / "usr/bin/cloud-init").exists()
        layer = _modules_layer(k, tree, out / ROOTFS, root_image, data_dir, console)
        if layer is not None:
            os.link(layer, out / MODULES)
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
            kernel_signed=sig.shim_accepts,
            kernel_signer=sig.signer,
            autologin=autologin,
        )
        for fname in (KERNEL, INITRD, ROOTFS, MODULES):
            if not (out / fname).exists():
                continue
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


def _live_kernel(src: Source, image: Path, root_image: str, work: Path, console: Console) -> Kernel:
    """`--kernel image` on live media: /boot and /lib/modules unpacked from the squashfs (nothing else)."""
    if root_image:
        raise ImageError(f"--kernel image: the root of {src.text} is {root_image} inside the squashfs; "
                         "its kernel cannot be taken from there: give --kernel")
    dest = work / "image-kernel"
    proc = subprocess.run(["unsquashfs", "-no-progress", "-q", "-d", str(dest), str(image),
                           "boot", "lib/modules", "usr/lib/modules"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if not dest.is_dir():
        why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise ImageError(f"--kernel image: cannot read {src.text}: {why[-1] if why else f'exit {proc.returncode}'}")
    return kernel_from_root(dest, src.text, console)


def _modules_layer(k: Kernel, tree: Path | None, rootfs: Path, root_image: str, data_dir: Path,
                   console: Console) -> Path | None:
    """The shared modules layer for k, unless the root carries /lib/modules/<k.version> itself."""
    from .modules import modules_layer, root_has_modules, squashfs_has_modules

    if tree is not None and root_has_modules(tree, k.version):
        return None
    if tree is None and not root_image and squashfs_has_modules(rootfs, k.version):
        return None
    path, _entry = modules_layer(k, data_dir, console)
    return path


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
    """Remove an image; a blob (a kernel, a modules layer) goes with the last image that links it."""
    from .blobs import gc

    check_name(name)
    d = images_dir(data_dir) / name
    if not (d / MANIFEST).is_file():
        raise ImageError(f"image {name!r} not found in {images_dir(data_dir)}")
    shutil.rmtree(d)
    gc(data_dir)


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
