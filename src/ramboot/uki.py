"""A unified kernel image (UKI) per image, for measured boots under UEFI through iPXE.

Debian 12's iPXE hands the kernel its initrd through its own file system (`initrd=`), which
Linux 6.1's EFI stub does not measure. systemd-stub (Debian's `systemd-boot-efi`) with the
kernel and the initrd in its own PE sections is one EFI image: the firmware measures it
whole into PCR 4, the stub measures each section into PCR 11 and the command line iPXE passes
into PCR 12, and the kernel, started by LoadImage, measures the initrd it gets by LoadFile2
into PCR 9. No `.cmdline` section: the command line (with this boot's credential) is iPXE's.

Built with objcopy at section addresses above the stub's own (systemd 252's recipe), cached
as `images/<image>/ramboot-uki.efi` and built again when the kernel, the initrd, the CA
archive or the stub change (what it was built from is kept in memory only, so a file of
that name that came with an image is never taken for ours: each server builds its own
once). The image's files are hostile: read only when they are regular files directly in
the image's directory, never through a symlink.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .images.manifest import INITRD, KERNEL

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
NAME = "ramboot-uki.efi"  # served as images/<image>/ramboot-uki.efi
ALIGN = 0x100000  # the sections' addresses: MiB boundaries above the stub and each other
MAX_INPUT = 1 << 30  # a kernel or initrd larger than this is no image of ours


class UkiError(Exception):
    """The image's files cannot make a UKI (missing, not regular files, a symlink, too large)."""


@dataclass(frozen=True)
class Section:
    name: str
    vma: int  # its address relative to the image base
    size: int  # VirtualSize: what systemd-stub measures
    raw_size: int
    offset: int  # where its bytes are in the file


def sections(pe: bytes) -> list[Section]:
    """The section table of a PE image (no library: the few fields systemd-stub reads)."""
    if len(pe) < 0x40 or pe[:2] != b"MZ":
        raise UkiError("not a PE image")
    (pe_off,) = struct.unpack_from("<I", pe, 0x3C)
    if pe_off + 24 > len(pe) or pe[pe_off:pe_off + 4] != b"PE\0\0":
        raise UkiError("not a PE image")
    count, = struct.unpack_from("<H", pe, pe_off + 6)
    opt_size, = struct.unpack_from("<H", pe, pe_off + 20)
    table = pe_off + 24 + opt_size
    if table + 40 * count > len(pe):
        raise UkiError("PE section table runs past the file")
    out = []
    for i in range(count):
        raw_name, vsize, vma, raw_size, offset = struct.unpack_from("<8sIIII", pe, table + 40 * i)
        out.append(Section(raw_name.rstrip(b"\0").decode("ascii", "replace"), vma, vsize, raw_size, offset))
    return out


def _read(image_dir: Path, name: str) -> bytes:
    """A file directly in the image's directory: regular, not a symlink, of a sane size."""
    try:
        dir_fd = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise UkiError(f"{image_dir.name}/{name}: {e.strerror} (a regular file, not a symlink, is needed)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INPUT:
            raise UkiError(f"{image_dir.name}/{name}: not a regular file of at most {MAX_INPUT} bytes")
        return f.read()


def _osrel(image: str) -> bytes:
    return f'ID=ramboot\nNAME="ramboot image {image}"\n'.encode()


def build(stub: Path, kernel: bytes, initrd: bytes, osrel: bytes, out: Path) -> None:
    """objcopy the stub with `.osrel`, `.linux` and `.initrd`, each at a MiB boundary above the
    one before (systemd 252's documented recipe, the addresses computed from the sizes)."""
    top = max(s.vma + max(s.size, s.raw_size) for s in sections(stub.read_bytes()))
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        args = []
        vma = top
        for name, data in ((".osrel", osrel), (".linux", kernel), (".initrd", initrd)):
            vma = (vma + ALIGN - 1) // ALIGN * ALIGN
            path = Path(tmp) / name.lstrip(".")
            path.write_bytes(data)
            args += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
            vma += len(data)
        p = subprocess.run(["objcopy", *args, str(stub), str(Path(tmp) / "uki")], capture_output=True, text=True)
        if p.returncode != 0:
            raise UkiError(f"objcopy: {p.stderr.strip()[-300:]}")
        os.replace(Path(tmp) / "uki", out)


class UkiCache:
    """The images' UKIs, built on first request and again when what they are made of changes."""

    def __init__(self, images: Path, stub: Path = STUB):
        self.images = images
        self.stub = stub
        self._lock = threading.Lock()  # one check or build at a time (worker threads of one server)
        # image -> (what it was built from: the files' identities and the CA's hash; the file
        # built; its sha256)
        self._built: dict[str, tuple[tuple[object, ...], tuple[int, int, int], bytes]] = {}

    def path(self, image: str, ca: bytes | None) -> Path:
        """`images/<image>/ramboot-uki.efi`, up to date: the image's kernel, and as its initrd
        the CA archive (when the server has one) then the image's initrd, as the script would
        load. Whether it is up to date is a few lstat calls (a boot storm asks once per node);
        only a build reads the files. Another process of the server (`[serve] workers`) may have
        built it again from the same inputs: the same bytes under a new inode, taken once its
        hash is checked, so the workers do not rebuild it in turn for every request."""
        image_dir = self.images / image
        with self._lock:
            try:
                if not stat.S_ISDIR(image_dir.lstat().st_mode):
                    raise UkiError(f"{image}: not a directory of the images (a symlink?)")
            except OSError as e:
                raise UkiError(f"{image}: {e.strerror}") from None
            key = (_identity(self.stub), _identity(image_dir / KERNEL), _identity(image_dir / INITRD),
                   hashlib.sha256(ca or b"").digest())
            out = image_dir / NAME
            built = self._built.get(image)
            if (0, 0, 0) not in key and built is not None and built[0] == key:
                now = _identity(out)
                if now == built[1]:
                    return out
                if now != (0, 0, 0) and built[2] and _sha256(image_dir) == built[2]:
                    self._built[image] = (key, now, built[2])
                    return out
            kernel, initrd = _read(image_dir, KERNEL), _read(image_dir, INITRD)
            if not self.stub.is_file():
                raise UkiError(f"{self.stub} is missing: install systemd-boot-efi")
            parts = [*([ca] if ca else []), initrd]  # ca.cpio is a multiple of 512 bytes: the next starts aligned
            build(self.stub, kernel, b"".join(parts), _osrel(image), out)
            self._built[image] = (key, _identity(out), _sha256(image_dir))
            return out


def _sha256(image_dir: Path) -> bytes:
    """The UKI's hash, read as every other file of the image is (`_read`: no symlink)."""
    try:
        return hashlib.sha256(_read(image_dir, NAME)).digest()
    except UkiError:
        return b""


def _identity(path: Path) -> tuple[int, int, int]:
    """A regular file's inode, mtime and size (not through a symlink); zeros for anything else."""
    try:
        st = path.lstat()
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else (0, 0, 0)
