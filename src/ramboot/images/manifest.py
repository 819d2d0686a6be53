"""`image.toml`: an image's manifest, with every file's size and sha256.

The manifest is what makes images content-addressed: the server puts the root
image's sha256 on the kernel command line and the node refuses anything else.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "image.toml"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
ROOTFS = "rootfs.squashfs"
# The kernel's modules, a second read-only layer under the root (modules.py); only in
# images whose root lacks them. Shared by the images of one kernel (a hard link).
MODULES = "modules.squashfs"


# What a manifest may say (a pulled one is another server's word, `image pull`): a sha256
# names a blob file, a file name a file in the image's directory, so neither may be a path.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
KNOWN_FILES = (KERNEL, INITRD, ROOTFS, MODULES)


class ManifestError(Exception):
    pass


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass
class Manifest:
    name: str
    source: str
    created: str
    kernel_version: str
    initramfs: str = "ramboot"
    files: dict[str, FileEntry] = field(default_factory=dict)
    kernel_source: str = ""
    build_seconds: float = 0.0
    # iso: sources: the squashfs inside the ISO that became rootfs.squashfs.
    source_member: str = ""
    # A dmsquash-live squashfs: the filesystem image inside it that is the root
    # (LiveOS/rootfs.img or LiveOS/ext3fs.img); empty when the squashfs is the root.
    root_image: str = ""
    # The root has cloud-init: nodes get a NoCloud seed in their overlay (docs/nodes.md).
    cloud_init: bool = False
    # Secure Boot (loader "grub"): does the kernel carry a signature Debian's shim
    # accepts (`sbverify` against shim's certificate)? None: not known (an older
    # manifest, or no sbverify at build time).
    kernel_signed: bool | None = None
    kernel_signer: str = ""
    # Root is logged in on every console (`image build --autologin`); false: consoles ask for a login.
    autologin: bool = False

    def to_toml(self) -> str:
        lines = [
            f'name = "{self.name}"',
            f'source = "{_esc(self.source)}"',
            f'created = "{self.created}"',
            f'kernel_version = "{_esc(self.kernel_version)}"',
            f'initramfs = "{self.initramfs}"',
            f'kernel_source = "{_esc(self.kernel_source)}"',
            f"build_seconds = {self.build_seconds:.1f}",
        ]
        if self.source_member:
            lines.append(f'source_member = "{_esc(self.source_member)}"')
        if self.root_image:
            lines.append(f'root_image = "{_esc(self.root_image)}"')
        if self.cloud_init:
            lines.append("cloud_init = true")
        if self.autologin:
            lines.append("autologin = true")
        if self.kernel_signed is not None:
            lines.append(f"kernel_signed = {'true' if self.kernel_signed else 'false'}")
        if self.kernel_signer:
            lines.append(f'kernel_signer = "{_esc(self.kernel_signer)}"')
        lines.append("")
        for fname in sorted(self.files):
            e = self.files[fname]
            lines += [f'[files."{fname}"]', f"size = {e.size}", f'sha256 = "{e.sha256}"', ""]
        return "\n".join(lines)


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def images_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "images"


def load_manifest(data_dir: Path, name: str) -> Manifest:
    path = images_dir(data_dir) / name / MANIFEST
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"image {name!r} not found in {images_dir(data_dir)}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ManifestError(f"{path}: unreadable manifest: {e}") from None
    try:
        _check(raw)
        files = {k: FileEntry(size=int(v["size"]), sha256=str(v["sha256"])) for k, v in raw.get("files", {}).items()}
        return Manifest(
            name=raw["name"],
            source=raw.get("source", ""),
            created=raw.get("created", ""),
            kernel_version=raw.get("kernel_version", ""),
            initramfs=raw.get("initramfs", "ramboot"),
            files=files,
            kernel_source=raw.get("kernel_source", ""),
            build_seconds=float(raw.get("build_seconds", 0.0)),
            source_member=str(raw.get("source_member", "")),
            root_image=str(raw.get("root_image", "")),
            cloud_init=bool(raw.get("cloud_init", False)),
            kernel_signed=bool(raw["kernel_signed"]) if "kernel_signed" in raw else None,
            kernel_signer=str(raw.get("kernel_signer", "")),
            autologin=raw.get("autologin", False) is True,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: bad manifest: {e}") from None


def _check(raw: dict[str, Any]) -> None:
    """Refuse what could make a path, a command line or a log line of a manifest's words."""
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"name {name!r} is not an image name")
    if raw.get("initramfs", "ramboot") not in ("ramboot", "dracut"):
        raise ValueError(f"initramfs {raw.get('initramfs')!r}: expected ramboot or dracut")
    for key, value in raw.items():
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"{key}: a control character")
    files = raw.get("files", {})
    if not isinstance(files, dict):
        raise ValueError("files is not a table")
    for fname, entry in files.items():
        if fname not in KNOWN_FILES and not NAME_RE.match(fname):
            raise ValueError(f"file name {fname!r} is not a plain name")
        if not isinstance(entry, dict):
            raise ValueError(f"files.{fname} is not a table")
        sha, size = entry.get("sha256"), entry.get("size")
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise ValueError(f"files.{fname}: sha256 {sha!r} is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"files.{fname}: size {size!r} is not a non-negative integer")


def sha256_file(p: Path) -> str:
    """A file's sha256, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
