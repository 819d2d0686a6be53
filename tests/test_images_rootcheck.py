"""Roots that cannot boot are refused at build time, in one line, before anything is squashed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ramboot.images.errors import ImageError
from ramboot.images.rootcheck import check_root

IMAGE_CLI = [sys.executable, "-c", "from ramboot.images.cli import image; image()"]


def debian_like(tree: Path) -> Path:
    """Merged /usr with absolute and relative links, as Debian lays out /sbin/init and os-release."""
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/lib/systemd").mkdir(parents=True)
    (tree / "etc").mkdir()
    os.symlink("usr/sbin", tree / "sbin")
    os.symlink("usr/lib", tree / "lib")
    (tree / "usr/lib/systemd/systemd").write_text("#!/bin/sh\n")
    os.chmod(tree / "usr/lib/systemd/systemd", 0o755)
    os.symlink("/lib/systemd/systemd", tree / "usr/sbin/init")
    (tree / "usr/lib/os-release").write_text("ID=debian\n")
    os.symlink("../usr/lib/os-release", tree / "etc/os-release")
    return tree


def test_links_resolve_inside_the_root(tmp_path: Path) -> None:
    tree = debian_like(tmp_path / "t")
    check_root(tree, "dracut")
    (tree / "usr/lib/os-release").unlink()  # a dangling link is no os-release
    with pytest.raises(ImageError, match="--initramfs dracut: the root has no /etc/os-release"):
        check_root(tree, "dracut")
    check_root(tree, "ramboot")  # ramboot's initramfs does not need it
    (tree / "usr/lib/systemd/systemd").unlink()
    with pytest.raises(ImageError, match="the root has no /sbin/init"):
        check_root(tree, "ramboot")


@pytest.mark.parametrize("initramfs,drop,match", [
    ("ramboot", "usr/lib/systemd/systemd", "the root has no /sbin/init"),
    ("dracut", "usr/lib/os-release", "--initramfs dracut: the root has no /etc/os-release"),
])
def test_cli_refuses_in_one_line(tmp_path: Path, initramfs: str, drop: str, match: str) -> None:
    tree = debian_like(tmp_path / "root")
    (tree / drop).unlink()
    data = tmp_path / "data"
    p = subprocess.run([*IMAGE_CLI, "build", "x", "--rootfs", str(tree), "--kernel", "image", "--initramfs", initramfs,
                        "--data-dir", str(data)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    err = p.stderr.strip()
    assert p.returncode != 0 and len(err.splitlines()) == 1 and match in err, err
    assert list((data / "images").iterdir()) == []
