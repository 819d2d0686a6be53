"""Refuse, at build time, a root that cannot boot: the node would otherwise stop far from the cause.

Paths are looked up inside the tree: an absolute symlink (`/sbin/init -> /lib/systemd/systemd`)
points into the root, not into the build host.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ImageError


def in_tree(tree: Path, path: str, hops: int = 40) -> Path | None:
    """Where `path` of the booted root lives in `tree` (symlinks followed within the tree), or None."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    here = tree
    while parts:
        name = parts.pop(0)
        if name == "..":
            here = here.parent if here != tree else tree
            continue
        nxt = here / name
        if nxt.is_symlink():
            if hops == 0:
                return None
            hops -= 1
            target = os.readlink(nxt)
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            here = tree if target.startswith("/") else here
            continue
        if not nxt.exists() and not nxt.is_symlink():
            return None
        here = nxt
    return here


def check_root(tree: Path, initramfs: str) -> None:
    """An init to start, and for dracut an os-release (systemd's switch-root refuses a root without one)."""
    init = in_tree(tree, "/sbin/init")
    if init is None or not init.is_file() or not os.access(init, os.X_OK):
        raise ImageError("the root has no /sbin/init, so the node would have nothing to start: install an init "
                         "in it (systemd-sysv, or busybox's init)")
    if initramfs == "dracut" and not any(
            (p := in_tree(tree, f)) is not None and p.is_file() for f in ("/etc/os-release", "/usr/lib/os-release")):
        raise ImageError("--initramfs dracut: the root has no /etc/os-release, and systemd's switch-root in a dracut "
                         "initrd refuses such a root (the node ends in an emergency shell): add one, or use "
                         "--initramfs ramboot")
