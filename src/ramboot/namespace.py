"""The one file namespace that TFTP and HTTP share.

`images/NAME/FILE` is the same file over both. Boot programs live at the top
level (`undionly.kpxe`, `snponly.efi`, `pxelinux.0`, ...), and some names are
generated per request (`pxelinux.cfg/01-<mac>`, `boot/<mac>.ipxe`). No request
ever resolves outside the data directory: `..`, absolute paths, backslashes,
percent-encoded tricks and symlinks that leave the tree are all refused.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .macaddr import BadMac, normalize_mac
from .policy import Booter

LOADERS_DIR = "loaders"
IMAGES_DIR = "images"

# Where Debian's packages put the boot programs we serve.
SYSTEM_LOADERS = {
    "undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe",
    "ipxe.efi": "/usr/lib/ipxe/ipxe.efi",
    "snponly.efi": "/usr/lib/ipxe/snponly.efi",
    "pxelinux.0": "/usr/lib/PXELINUX/pxelinux.0",
    "lpxelinux.0": "/usr/lib/PXELINUX/lpxelinux.0",
    "ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32",
}


class PathRefused(Exception):
    """The request names something outside the namespace; never served."""


@dataclass(frozen=True)
class StaticFile:
    path: Path
    kind: str  # loader | kernel | initrd | rootfs | manifest | file


@dataclass(frozen=True)
class GeneratedFile:
    data: bytes
    kind: str  # pxelinux-cfg | ipxe-script
    mac: str | None = None  # the machine it was generated for, when its name says


Resolved = StaticFile | GeneratedFile

# The boot stage (CONTRACTS.md) a kind is when served; other kinds are served without one.
STAGE_OF_KIND = {"loader": "loader", "pxelinux-cfg": "script", "ipxe-script": "script",
                 "kernel": "kernel", "initrd": "initrd", "rootfs": "rootfs"}


def install_loaders(data_dir: Path) -> list[str]:
    """Copy the boot programs into the data directory (not symlinks: those would leave it)."""
    dest = Path(data_dir) / LOADERS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    installed = []
    for name, src in SYSTEM_LOADERS.items():
        s = Path(src)
        if not s.is_file():
            continue
        d = dest / name
        if not d.exists() or d.stat().st_size != s.stat().st_size or d.stat().st_mtime < s.stat().st_mtime:
            tmp = d.with_suffix(d.suffix + ".tmp")
            shutil.copyfile(s, tmp)
            os.replace(tmp, d)
        installed.append(name)
    return installed


def split_request(name: str) -> list[str]:
    """Validate a request path and split it into segments, or raise PathRefused.

    `name` is what the client sent, already percent-decoded once by the HTTP
    layer (TFTP has no encoding). A `%` left after that is refused too, so
    double encoding cannot smuggle `..` past us.
    """
    if not name or len(name) > 1024:
        raise PathRefused("empty or overlong path")
    if any(c in name for c in ("\\", "\x00", "%")) or any(ord(c) < 0x20 for c in name):
        raise PathRefused("backslash, NUL, control or percent character in path")
    if name.startswith("/"):
        raise PathRefused("absolute path")
    parts = name.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            raise PathRefused("empty, '.' or '..' segment")
    return parts


_KINDS = {"vmlinuz": "kernel", "initrd.img": "initrd", "rootfs.squashfs": "rootfs", "image.toml": "manifest"}


class Namespace:
    def __init__(self, data_dir: Path, booter: Booter):
        self.data_dir = Path(data_dir).resolve()
        self.booter = booter
        # The trees files are served from, resolved once (not per request).
        self._images = (self.data_dir / IMAGES_DIR).resolve()
        self._loaders = (self.data_dir / LOADERS_DIR).resolve()

    def resolve(self, name: str) -> Resolved | None:
        """Map a request to a file or generated content; None if it does not exist."""
        parts = split_request(name)
        if parts[0] == "pxelinux.cfg" and len(parts) == 2:
            return self._pxelinux_cfg(parts[1])
        if parts[0] == "boot" and len(parts) == 2 and parts[1].endswith(".ipxe"):
            try:
                mac = normalize_mac(parts[1][: -len(".ipxe")])
            except BadMac:
                return None
            script = self.booter.ipxe_script(mac)
            return GeneratedFile(script.encode(), "ipxe-script", mac) if script else None
        if parts == ["boot.ipxe"]:
            return GeneratedFile(self.booter.entry_script().encode(), "ipxe-script")
        if parts[0] == IMAGES_DIR and len(parts) == 3:
            path = self._inside(self._images, parts[1:])
            return StaticFile(path, _KINDS.get(parts[2], "file")) if path else None
        if len(parts) == 1:
            path = self._inside(self._loaders, parts)
            return StaticFile(path, "loader") if path else None
        return None

    def _inside(self, root: Path, parts: list[str]) -> Path | None:
        """The real path of root/parts if it is a regular file under root (already resolved), else None."""
        candidate = root.joinpath(*parts)
        try:
            real = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, RuntimeError) as e:  # symlink loops and the like
            raise PathRefused(f"unresolvable path: {e}") from None
        if not real.is_relative_to(root):
            raise PathRefused("path leaves the data directory")
        return real if real.is_file() else None

    def _pxelinux_cfg(self, leaf: str) -> Resolved | None:
        mac = None
        if leaf == "default":
            cfg = self.booter.pxelinux_config(None)
        elif leaf.startswith("01-"):
            try:
                mac = normalize_mac(leaf)
            except BadMac:
                return None
            cfg = self.booter.pxelinux_config(mac)
        else:
            return None  # UUID and hex-IP names: fall through to 01-<mac> or default
        return GeneratedFile(cfg.encode(), "pxelinux-cfg", mac) if cfg else None
