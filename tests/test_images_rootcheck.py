"""Roots and kernels that cannot boot are refused at build time, in one line, before anything is squashed."""

from __future__ import annotations

import os
import shutil
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


# --- a kernel whose modules do not match --------------------------------------------


def kernel_tree(tmp_path: Path, dir_version: str | None = None) -> tuple[Path, str, Path]:
    """Debian's cloud kernel as an unpacked tree (`--kernel DIR`): boot/vmlinuz-V and lib/modules/V,
    V being `dir_version` when given (the bzImage still says its own). Returns (tree, V, modules dir)."""
    from rich.console import Console

    from ramboot.images.kernel import resolve_kernel

    k = resolve_kernel("debian", Console(quiet=True))
    v = dir_version or k.version
    tree = tmp_path / "k"
    (tree / "boot").mkdir(parents=True)
    shutil.copyfile(k.image, tree / "boot" / f"vmlinuz-{v}")
    shutil.copytree(k.modules, tree / "lib/modules" / v, copy_function=os.link)
    return tree, k.version, tree / "lib/modules" / v


def refused(tmp_path: Path, args: list[str], match: str) -> None:
    data = tmp_path / "data"
    p = subprocess.run([*IMAGE_CLI, "build", "x", *args, "--data-dir", str(data)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    err = p.stderr.strip()
    assert p.returncode != 0 and len(err.splitlines()) == 1 and match in err, err
    assert not (data / "images").exists() or list((data / "images").iterdir()) == []


def test_kernel_named_for_other_modules_is_refused(tmp_path: Path) -> None:
    tree, real, _ = kernel_tree(tmp_path, "6.1.0-99-cloud-amd64")
    refused(tmp_path, ["--kernel", str(tree)],
            f"kernel vmlinuz-6.1.0-99-cloud-amd64 is version {real}, but its modules are lib/modules/6.1.0-99-cloud")


def test_modules_built_for_another_kernel_are_refused(tmp_path: Path) -> None:
    tree, v, mods = kernel_tree(tmp_path)
    first = (mods / "modules.dep").read_text().split(":", 1)[0]
    ko = mods / first
    data = ko.read_bytes()
    other = v.replace("6.", "5.", 1)  # same length: the ELF stays whole
    assert f"vermagic={v} ".encode() in data
    ko.unlink()  # a hard link to the cache's copy: write a new file
    ko.write_bytes(data.replace(f"vermagic={v} ".encode(), f"vermagic={other} ".encode()))
    refused(tmp_path, ["--kernel", str(tree)], f"kernel {v}: its module {first} was built for {other} (vermagic)")
    # The same tree, carried by a root as its own kernel (`--kernel image`).
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    (root / "sbin/init").write_text("#!/bin/sh\n")
    (root / "sbin/init").chmod(0o755)
    shutil.move(tree / "boot", root / "boot")
    shutil.move(tree / "lib", root / "lib")
    refused(tmp_path, ["--rootfs", str(root), "--kernel", "image"], f"built for {other} (vermagic)")
