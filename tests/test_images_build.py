"""`ramboot image build` end to end (no VM): the manifest, the initramfs contents,
reproducibility, the CLI's list/show/verify/rm, and every bad input as one line."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from images_vm import demo_image  # noqa: F401  (session fixture)
from ramboot.images.build import build_image
from ramboot.images.cli import image
from ramboot.images.manifest import INITRD, KERNEL, MODULES, ROOTFS, load_manifest

IMAGE_CLI = [sys.executable, "-c", "from ramboot.images.cli import image; image()"]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_manifest_sums_match_the_files(demo_image: Path) -> None:
    m = load_manifest(demo_image.parent.parent, "demo")
    assert m.name == "demo" and m.source == "builtin" and m.initramfs == "ramboot"
    assert m.kernel_version.endswith("-cloud-amd64") and m.kernel_source == "debian"
    assert set(m.files) == {KERNEL, INITRD, ROOTFS, MODULES}  # the built-in root carries no modules
    for fname, entry in m.files.items():
        p = demo_image / fname
        assert entry.size == p.stat().st_size
        assert entry.sha256 == sha(p)
    assert not [p for p in demo_image.parent.iterdir() if p.name.startswith(".")]  # no build leftovers


def test_initramfs_carries_modules_with_their_dependencies(demo_image: Path, tmp_path: Path) -> None:
    raw = subprocess.run(["zstd", "-dc", str(demo_image / INITRD)], capture_output=True, check=True).stdout
    names = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True).stdout.decode()
    names = set(names.split())
    version = load_manifest(demo_image.parent.parent, "demo").kernel_version
    mods = f"lib/modules/{version}"
    for p in ("init", "bin/busybox", "etc/ramboot/udhcpc.script", "dev/console", f"{mods}/modules.dep",
              f"{mods}/modules.alias"):
        assert p in names, p
    ko = {n.rsplit("/", 1)[1] for n in names if n.endswith(".ko")}
    # virtio_net needs net_failover and failover: modules.dep's closure, not a hand list
    assert {"virtio_net.ko", "net_failover.ko", "failover.ko", "squashfs.ko", "overlay.ko", "loop.ko"} <= ko
    subprocess.run(["cpio", "-id", "--quiet", f"{mods}/modules.dep"], input=raw, cwd=tmp_path, check=True)
    dep = (tmp_path / mods / "modules.dep").read_text()
    listed = {ln.split(":")[0] for ln in dep.splitlines()}
    assert listed == {n[len(mods) + 1:] for n in names if n.endswith(".ko")}


def test_rebuild_gives_the_same_bytes(demo_image: Path, tmp_path: Path) -> None:
    m = build_image(tmp_path / "data", "again")
    first = load_manifest(demo_image.parent.parent, "demo")
    for fname in (KERNEL, INITRD, ROOTFS, MODULES):
        assert m.files[fname].sha256 == first.files[fname].sha256, fname


def test_cli_list_show_verify_rm(demo_image: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_image, data / "images" / "demo")
    run = CliRunner().invoke
    r = run(image, ["list", "--data-dir", str(data)])
    assert r.exit_code == 0 and r.output.startswith("demo\t")
    r = run(image, ["show", "demo", "--data-dir", str(data)])
    assert r.exit_code == 0 and 'name = "demo"' in r.output
    r = run(image, ["verify", "demo", "--data-dir", str(data)])
    assert r.exit_code == 0 and "demo: ok" in r.output
    with open(data / "images/demo" / ROOTFS, "r+b") as f:
        f.seek(100)
        f.write(b"drift")
    r = run(image, ["verify", "demo", "--data-dir", str(data)])
    assert r.exit_code == 1 and "DRIFT demo/rootfs.squashfs: sha256" in r.output
    (data / "images/demo" / INITRD).unlink()
    r = run(image, ["verify", "demo", "--data-dir", str(data)])
    assert "DRIFT demo/initrd.img: missing" in r.output
    r = run(image, ["rm", "demo", "--data-dir", str(data)])
    assert r.exit_code == 0 and not (data / "images/demo").exists()


def one_line_error(args: list[str], match: str, data: Path) -> None:
    proc = subprocess.run(IMAGE_CLI + args, capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert match in err, err
    leftovers = list((data / "images").iterdir()) if (data / "images").exists() else []
    assert leftovers == [], leftovers


@pytest.mark.parametrize("rootfs,match", [
    ("/nonexistent/rbi-root", "no such file or directory"),
    ("ftp:some/where", "unknown scheme 'ftp:'"),
    ("oci:/nonexistent/rbi-oci", "no such file or directory"),
])
def test_cli_bad_source(tmp_path: Path, rootfs: str, match: str) -> None:
    one_line_error(["build", "x", "--rootfs", rootfs, "--data-dir", str(tmp_path)], match, tmp_path)


def test_cli_damaged_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\0" * 10 + b"garbage" * 1000)
    one_line_error(["build", "x", "--rootfs", str(bad), "--data-dir", str(tmp_path / "d")],
                   "not a directory or a tar archive", tmp_path / "d")


def test_cli_bad_name_and_missing_data_dir(tmp_path: Path) -> None:
    one_line_error(["build", "../evil", "--data-dir", str(tmp_path)], "bad image name", tmp_path)
    one_line_error(["build", "x"], "--data-dir", tmp_path)


def test_cli_kernel_without_needed_modules(demo_image: Path, tmp_path: Path) -> None:
    version = load_manifest(demo_image.parent.parent, "demo").kernel_version
    tree = tmp_path / "k"
    (tree / "boot").mkdir(parents=True)
    shutil.copyfile(demo_image / KERNEL, tree / "boot" / f"vmlinuz-{version}")
    mods = tree / "lib/modules" / version
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("kernel/fs/squashfs/squashfs.ko:\n")
    one_line_error(["build", "x", "--kernel", str(tree), "--data-dir", str(tmp_path / "d")],
                   "lacks the modules ramboot needs: loop, overlay", tmp_path / "d")
    one_line_error(["build", "x", "--kernel", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "d")],
                   "--kernel", tmp_path / "d")


def test_cli_full_disk_leaves_nothing(demo_image: Path, tmp_path: Path) -> None:
    """A 4 MiB tmpfs (in a private mount namespace) cannot hold the kernel."""
    data = tmp_path / "small"
    data.mkdir()
    # demo_image has cached the kernel: only the disk can fail
    script = (f"mount -t tmpfs -o size=4m tmpfs {data} && "
              f"{' '.join(IMAGE_CLI[:2])} \"{IMAGE_CLI[2]}\" build x --data-dir {data}; rc=$?; "
              f"echo LEFT:$(ls -A {data}/images); exit $rc")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "no space left" in err, err
    assert "LEFT:\n" in proc.stdout + "\n" and proc.stdout.strip() == "LEFT:", proc.stdout


def test_generic_kernel_carries_every_ethernet_driver(tmp_path: Path) -> None:
    """`--kernel debian:generic`: real servers' NICs come up, whatever they are."""
    m = build_image(tmp_path / "data", "gen", kernel="debian:generic")
    assert m.kernel_version.endswith("-amd64") and not m.kernel_version.endswith("cloud-amd64")
    raw = subprocess.run(["zstd", "-dc", str(tmp_path / "data" / "images" / "gen" / INITRD)],
                         capture_output=True, check=True).stdout
    names = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True).stdout.decode()
    carried = {n.rsplit("/", 1)[1] for n in names.split() if "/drivers/net/ethernet/" in n and ".ko" in n}
    from ramboot.images.kernel import cache_dir

    shipped = {p.name for p in cache_dir().glob(f"kernels/*/lib/modules/{m.kernel_version}/kernel/drivers/net/ethernet/**/*.ko*")}
    assert shipped, "the generic kernel's own module tree should be in the cache"
    assert carried == shipped, sorted(shipped - carried)
    assert {"e1000e.ko", "igb.ko", "ixgbe.ko", "i40e.ko", "ice.ko", "mlx5_core.ko", "bnxt_en.ko", "tg3.ko"} <= {
        n.split(".ko")[0] + ".ko" for n in carried}


def test_files_are_laid_over_the_root_inside_it(demo_image: Path, tmp_path: Path) -> None:
    """`--files DIR`: the root's own symlinks are followed inside the root (a hostile `etc -> HOST`
    writes nothing on the host), DIR's symlinks are kept as links, the source directory is left as it was."""
    host = tmp_path / "host-etc"
    host.mkdir()
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "sbin/init")
    os.symlink(str(host), root / "etc")  # absolute: the root's own /…/host-etc, never the host's
    before = sorted(p.name for p in root.iterdir())
    files = tmp_path / "files"
    (files / "etc/app").mkdir(parents=True)
    (files / "etc/app/app.toml").write_text("x = 1\n")
    os.symlink("/lib/systemd/system/app.service", files / "etc/app/app.service")
    data = tmp_path / "d"
    p = subprocess.run([*IMAGE_CLI, "build", "x", "--rootfs", str(root), "--files", str(files), "--data-dir", str(data)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert list(host.iterdir()) == [] and sorted(p.name for p in root.iterdir()) == before
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(data / "images/x" / ROOTFS)], capture_output=True,
                             text=True, check=True).stdout
    assert f"{host}/app/app.toml" in listing, listing
    assert f"{host}/app/app.service -> /lib/systemd/system/app.service" in listing, listing
    live = demo_image / ROOTFS
    one_line_error(["build", "y", "--rootfs", f"squashfs:{live}", "--files", str(files), "--data-dir", str(data)],
                   f"--files: the root of --rootfs squashfs:{live} is used as it is", data / "nope")
    one_line_error(["build", "y", "--deb", str(files / "etc/app/app.toml"), "--data-dir", str(data)],
                   "--deb: only for the Debian roots", data / "nope")
