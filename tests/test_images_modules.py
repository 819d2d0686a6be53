"""The kernel's modules layer and `--kernel image`, without booting anything.

- The layer is built once per kernel and content-addressed: two images of one
  kernel share one `DATA/modules/<sha256>.squashfs` (hard links), the manifest
  lists it, and removing the last image that uses it removes it.
- It holds the whole module tree twice over (lib/ and usr/lib/, stored once), so a
  merged-/usr root and a plain one both see `/lib/modules/V`.
- A root that carries `/lib/modules/V` itself needs no layer.
- `--kernel image` takes the root's own newest `/boot/vmlinuz-V` and says so; a root
  without a kernel is one line and nothing is written.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from images_vm import demo_image  # noqa: F401  (session fixture)
from ramboot.images.blobs import blob_path
from ramboot.images.build import build_image, remove_image
from ramboot.images.kernel import in_root, kernel_from_root, version_key
from ramboot.images.manifest import KERNEL, MODULES, load_manifest
from ramboot.images.modules import root_has_modules
from ramboot.images.rootfs import builtin_tree
from test_images_build import one_line_error


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_demo_image_lists_a_shared_modules_layer(demo_image: Path) -> None:
    data = demo_image.parent.parent
    m = load_manifest(data, "demo")
    layer = demo_image / MODULES
    assert m.files[MODULES].sha256 == sha(layer) and m.files[MODULES].size == layer.stat().st_size
    stored = blob_path(data, m.files[MODULES].sha256)
    assert os.path.samefile(stored, layer)  # one copy per kernel, hard-linked into the image
    ls = subprocess.run(["unsquashfs", "-lc", "-d", "", str(layer)], capture_output=True, text=True,
                        check=True).stdout.split()
    v = m.kernel_version
    for top in ("lib", "usr/lib"):
        assert f"/{top}/modules/{v}/modules.dep" in ls, top
        assert f"/{top}/modules/{v}/kernel/drivers/net/tun.ko" in ls, top
        assert f"/{top}/modules/{v}/kernel/net/bridge/bridge.ko" in ls, top


def test_images_of_one_kernel_share_one_layer_until_the_last_is_removed(demo_image: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, b = build_image(data, "a"), build_image(data, "b")
    assert a.files[MODULES] == b.files[MODULES] == load_manifest(demo_image.parent.parent, "demo").files[MODULES]
    stored = blob_path(data, a.files[MODULES].sha256)
    assert stored.stat().st_nlink == 3  # the blob, and one link in each image
    remove_image(data, "a")
    assert stored.is_file() and stored.stat().st_nlink == 2
    remove_image(data, "b")
    assert not stored.exists()


def test_a_root_with_its_own_modules_needs_no_layer(demo_image: Path, tmp_path: Path) -> None:
    v = load_manifest(demo_image.parent.parent, "demo").kernel_version
    tree = tmp_path / "root"
    builtin_tree(tree)
    (tree / "usr/lib/modules" / v).mkdir(parents=True)
    (tree / "usr/lib/modules" / v / "modules.dep").write_text("")
    os.symlink("usr/lib", tree / "lib")  # merged /usr, as Debian has it
    assert root_has_modules(tree, v) and not root_has_modules(tree, "0.0.0-other")
    m = build_image(tmp_path / "data", "own", rootfs=str(tree))
    assert MODULES not in m.files and not (tmp_path / "data/images/own" / MODULES).exists()


def test_in_root_follows_symlinks_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/x").mkdir(parents=True)
    os.symlink("/usr/lib", tmp_path / "lib")  # absolute: relative to the root, never the host
    assert in_root(tmp_path, "lib/x") == tmp_path / "usr/lib/x"
    assert in_root(tmp_path, "lib/../lib/x") == tmp_path / "usr/lib/x"
    assert in_root(tmp_path, "../../usr/lib/x") == tmp_path / "usr/lib/x"  # `..` stops at the root
    assert in_root(tmp_path, "lib/none") is None


def test_kernel_image_takes_the_newest_and_says_so(demo_image: Path, tmp_path: Path) -> None:
    v = load_manifest(demo_image.parent.parent, "demo").kernel_version
    tree = tmp_path / "root"
    (tree / "boot").mkdir(parents=True)
    for ver in ("5.10.0-9-amd64", v):
        shutil.copyfile(demo_image / KERNEL, tree / "boot" / f"vmlinuz-{ver}")
    mods = tree / "usr/lib/modules" / v
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("")
    os.symlink("usr/lib", tree / "lib")
    out = io.StringIO()
    k = kernel_from_root(tree, "test", Console(file=out, width=200))
    assert k.version == v and k.image == tree / "boot" / f"vmlinuz-{v}" and k.modules == mods
    assert "taking the newest" in out.getvalue() and "5.10.0-9-amd64" in out.getvalue()
    assert sorted(["6.1.0-9", "6.1.0-10", "5.10.0-30"], key=version_key) == ["5.10.0-30", "6.1.0-9", "6.1.0-10"]


def test_kernel_image_on_a_root_without_a_kernel_is_one_line(demo_image: Path, tmp_path: Path) -> None:
    one_line_error(["build", "x", "--kernel", "image", "--data-dir", str(tmp_path / "d")],
                   "--kernel image: the root (builtin) has no kernel", tmp_path / "d")


# --- a hostile root's own kernel (`--kernel image`) ----------------------------------


def hostile_root(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A root with the cloud kernel and the modules its initramfs needs, and a "host" file
    outside it that the root's module lists try to reach (the root, the host secret, its bytes)."""
    from ramboot.images.initramfs import ModuleIndex, select_modules
    from ramboot.images.kernel import resolve_kernel

    k = resolve_kernel("debian", Console(quiet=True))
    mods, _nics = select_modules(k, ModuleIndex.load(k))
    idx = ModuleIndex.load(k)
    tree = tmp_path / "root"
    dest = tree / "lib/modules" / k.version
    for rel in [idx.path[m] for m in mods] + ["modules.dep", "modules.alias", "modules.softdep"]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(k.modules / rel, dest / rel)
    (tree / "boot").mkdir()
    shutil.copyfile(k.image, tree / "boot" / f"vmlinuz-{k.version}")
    (tree / "sbin").mkdir()
    (tree / "sbin/init").write_text("#!/bin/sh\n")  # a root an image build accepts, but for its kernel
    (tree / "sbin/init").chmod(0o755)
    secret = tmp_path / "host-shadow"
    marker = b"root:$6$rbi-host-secret-" + os.urandom(8).hex().encode()
    secret.write_bytes(marker + b"\n")
    return tree, secret, marker


def unpacked_initrd(path: Path) -> bytes:
    raw = path.read_bytes()
    tool = ["zstd", "-dc"] if raw[:4] == b"\x28\xb5\x2f\xfd" else ["gzip", "-dc"]
    return subprocess.run(tool, input=raw, capture_output=True, check=True).stdout


def test_root_module_lists_that_are_symlinks_are_read_inside_the_root(tmp_path: Path) -> None:
    """modules.order / modules.builtin / modules.alias as symlinks to a host file: resolved in the root."""
    from ramboot.images.initramfs import build_initramfs

    tree, secret, marker = hostile_root(tmp_path)
    mods = next((tree / "lib/modules").iterdir())
    os.symlink(str(secret), mods / "modules.order")  # absolute: the root's own path, not the host's
    os.symlink("../" * 12 + str(secret).lstrip("/"), mods / "modules.builtin")  # `..` stops at the root
    (mods / "modules.alias").unlink()
    os.symlink(str(secret), mods / "modules.alias")
    k = kernel_from_root(tree, "hostile", Console(quiet=True))
    out = tmp_path / "initrd.img"
    build_initramfs(k, out)
    cpio = unpacked_initrd(out)
    assert b"virtio_net.ko" in cpio  # a whole initramfs
    assert marker not in cpio


def test_modules_dep_naming_a_host_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """`kernel/.../virtio_net.ko: /etc/shadow` with `/etc/shadow:` copied the host's file into the initrd."""
    tree, secret, marker = hostile_root(tmp_path)
    mods = next((tree / "lib/modules").iterdir())
    dep = mods / "modules.dep"
    lines = dep.read_text().splitlines()
    lines = [ln + f" {secret}" if ln.split(":")[0].endswith("/virtio_net.ko") else ln for ln in lines]
    dep.write_text("\n".join(lines + [f"{secret}:"]) + "\n")
    data = tmp_path / "d"
    one_line_error(["build", "evil", "--rootfs", str(tree), "--kernel", "image", "--data-dir", str(data)],
                   f"the module tree names '{secret}': not a path inside it", data)
    dep.write_text("\n".join(lines + ["kernel/../../../../../../.." + str(secret) + ":"]) + "\n")
    one_line_error(["build", "evil", "--rootfs", str(tree), "--kernel", "image", "--data-dir", str(data)],
                   "not a path inside it", data)


def test_dracut_gets_a_clean_module_tree(tmp_path: Path) -> None:
    """What `--kmoddir` names holds regular files only, each resolved inside the root."""
    from ramboot.images.dracut import stage_modules
    from ramboot.images.errors import ImageError

    tree, secret, marker = hostile_root(tmp_path)
    mods = next((tree / "lib/modules").iterdir())
    os.symlink(str(secret), mods / "modules.order")
    os.symlink(str(secret.parent), mods / "build")  # a directory link: left out
    (tree / "etc").mkdir()
    (tree / "etc/own").write_bytes(b"the root's own file")
    os.symlink("/etc/own", mods / "modules.builtin")  # resolved inside the root
    os.mkfifo(mods / "modules.devname")
    k = kernel_from_root(tree, "hostile", Console(quiet=True))
    staged = stage_modules(k, tmp_path / "stage" / k.version)
    kinds = {p.relative_to(staged).as_posix(): p for p in staged.rglob("*")}
    assert all(p.is_dir() or (p.is_file() and not p.is_symlink()) for p in kinds.values())
    assert "modules.order" not in kinds and "build" not in kinds and "modules.devname" not in kinds
    assert (staged / "modules.builtin").read_bytes() == b"the root's own file"
    assert not any(marker in p.read_bytes() for p in kinds.values() if p.is_file())
    assert (staged / "modules.dep").read_bytes() == (mods / "modules.dep").read_bytes()
    (mods / "modules.dep").write_text(f"{secret}:\n")
    with pytest.raises(ImageError, match="not a path inside it"):
        stage_modules(k, tmp_path / "stage2" / k.version)
