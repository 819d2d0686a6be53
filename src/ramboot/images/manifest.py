"""`image.toml`: an image's manifest, with every file's size and sha256.

The manifest is what makes images content-addressed: the server puts the root
image's sha256 on the kernel command line and the node refuses anything else.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "image.toml"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
ROOTFS = "rootfs.squashfs"


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

    def to_toml(self) -> str:
        lines = [
            f'name = "{self.name}"',
            f'source = "{_esc(self.source)}"',
            f'created = "{self.created}"',
            f'kernel_version = "{_esc(self.kernel_version)}"',
            f'initramfs = "{self.initramfs}"',
            f'kernel_source = "{_esc(self.kernel_source)}"',
            f"build_seconds = {self.build_seconds:.1f}",
            "",
        ]
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
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: bad manifest: {e}") from None
