"""Live media as roots, without a VM: the ISO finder on the distributions' layouts
(ISOs written by pycdlib and by xorriso), `squashfs:` used as it is, the LiveOS
filesystem image found and recorded, ext4 carried in the initramfs, and every bad
input refused in one line with nothing written."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from live_media import ext4_image, liveos_squashfs, mksquashfs, pycdlib_iso, small_squashfs, xorriso_iso
from ramboot.images.errors import ImageError
from ramboot.images.live import extract_iso_root, find_iso_root, liveos_image
from ramboot.images.manifest import ROOTFS, load_manifest
from ramboot.images.rootfs import parse_source

IMAGE_CLI = [sys.executable, "-c", "from ramboot.images.cli import image; image()"]
QUIET = Console(stderr=True, quiet=True)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sq(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return small_squashfs(tmp_path_factory.mktemp("sq"), "root", "the root")


def one_line_error(args: list[str], match: str, data: Path) -> str:
    proc = subprocess.run(IMAGE_CLI + args, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert match in err, err
    leftovers = list((data / "images").iterdir()) if (data / "images").exists() else []
    assert leftovers == [], leftovers
    return err


# --- the ISO finder ------------------------------------------------------------------


@pytest.mark.parametrize("layout,files,member", [
    ("debian-live", {"live/filesystem.squashfs": "ROOT", "live/vmlinuz": b"k", "live/initrd.img": b"i"},
     "live/filesystem.squashfs"),
    ("fedora-liveos", {"LiveOS/squashfs.img": "ROOT", "EFI/BOOT/grub.cfg": b"menu"}, "LiveOS/squashfs.img"),
    # Ubuntu up to 23.04: one whole root, beside other casper files
    ("ubuntu-casper", {"casper/filesystem.squashfs": "ROOT", "casper/filesystem.manifest": b"pkgs",
                       "casper/filesystem.size": b"123"}, "casper/filesystem.squashfs"),
    # Ubuntu 23.10 and later: layers; the base is the whole root even when an upper one is bigger
    ("ubuntu-casper", {"casper/minimal.squashfs": "ROOT", "casper/minimal.standard.squashfs": "BIG",
                       "casper/minimal.standard.live.squashfs": "BIG", "casper/minimal.en.squashfs": "UPPER"},
     "casper/minimal.squashfs"),
    # the server ISO's chain
    ("ubuntu-casper", {"casper/ubuntu-server-minimal.squashfs": "ROOT",
                       "casper/ubuntu-server-minimal.ubuntu-server.squashfs": "BIG",
                       "casper/ubuntu-server-minimal.ubuntu-server.installer.squashfs": "UPPER"},
     "casper/ubuntu-server-minimal.squashfs"),
])
def test_finds_the_root_squashfs(tmp_path: Path, sq: bytes, layout: str, files: dict, member: str) -> None:
    big = sq + b"\0" * 65536  # still a squashfs (the magic is at its start), bigger than the base
    content = {k: (sq if v == "ROOT" else big if v == "BIG" else sq if v == "UPPER" else v) for k, v in files.items()}
    iso = pycdlib_iso(tmp_path / "t.iso", content)
    found = find_iso_root(iso, f"iso:{iso}")
    assert (found.member, found.layout, found.key) == (member, layout, "rr_path")
    out = tmp_path / "out.sq"
    extract_iso_root(iso, f"iso:{iso}", out, QUIET)
    assert out.read_bytes() == content[member]


def test_joliet_names_without_rock_ridge(tmp_path: Path, sq: bytes) -> None:
    iso = pycdlib_iso(tmp_path / "j.iso", {"live/filesystem.squashfs": sq}, rock_ridge=False)
    found = find_iso_root(iso, "iso:j")
    assert (found.key, found.path, found.member) == ("joliet_path", "/live/filesystem.squashfs",
                                                     "live/filesystem.squashfs")


def test_plain_iso9660_level1_names(tmp_path: Path, sq: bytes) -> None:
    """No Rock Ridge, no Joliet: filesystem.squashfs is FILESYST.SQU;1 and is still found."""
    iso = pycdlib_iso(tmp_path / "p.iso", {"live/filesystem.squashfs": sq}, rock_ridge=False, joliet=False, level=1)
    found = find_iso_root(iso, "iso:p")
    assert (found.key, found.path) == ("iso_path", "/LIVE/FILESYST.SQU;1")
    out = tmp_path / "out.sq"
    extract_iso_root(iso, "iso:p", out, QUIET)
    assert out.read_bytes() == sq


def test_xorriso_iso_with_rock_ridge_and_joliet(tmp_path: Path, sq: bytes) -> None:
    """An ISO written the way live-build and lorax write theirs, read back by pycdlib."""
    top = tmp_path / "top"
    (top / "LiveOS").mkdir(parents=True)
    (top / "LiveOS" / "squashfs.img").write_bytes(sq)
    (top / "images" / "pxeboot").mkdir(parents=True)
    (top / "images" / "pxeboot" / "vmlinuz").write_bytes(b"k")
    iso = xorriso_iso(top, tmp_path / "f.iso", volid="Fedora-WS-Live-41")
    found = find_iso_root(iso, "iso:f")
    assert (found.key, found.member, found.layout, found.size) == ("rr_path", "LiveOS/squashfs.img",
                                                                   "fedora-liveos", len(sq))


@pytest.mark.parametrize("files,match", [
    ({"boot/grub/grub.cfg": b"menu", "install/vmlinuz": b"k"}, "no live root in this ISO (looked for"),
    ({"casper/vmlinuz": b"k", "casper/filesystem.manifest": b"x"}, "no live root in this ISO"),
    ({"live/filesystem.squashfs": b"\0" * 4096}, "live/filesystem.squashfs: not a squashfs"),
    ({"LiveOS/squashfs.img": b"\0" * 1024 + b"\xe2\xe1\xf5\xe0" + b"\0" * 3068}, "an EROFS image, not a squashfs"),
])
def test_iso_without_a_usable_root_is_one_line(tmp_path: Path, files: dict, match: str) -> None:
    iso = pycdlib_iso(tmp_path / "n.iso", files)
    err = one_line_error(["build", "x", "--rootfs", f"iso:{iso}", "--data-dir", str(tmp_path / "d")], match,
                         tmp_path / "d")
    assert f"iso:{iso}" in err


def test_not_an_iso_or_missing_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"x" * 100_000)
    one_line_error(["build", "x", "--rootfs", f"iso:{junk}", "--data-dir", str(tmp_path / "d")],
                   "not a readable ISO 9660 image", tmp_path / "d")
    one_line_error(["build", "x", "--rootfs", f"iso:{tmp_path}/none.iso", "--data-dir", str(tmp_path / "d")],
                   f"iso:{tmp_path}/none.iso: no such file", tmp_path / "d")
    one_line_error(["build", "x", "--rootfs", f"iso:{tmp_path}", "--data-dir", str(tmp_path / "d")],
                   "is a directory, not an ISO image", tmp_path / "d")


# --- squashfs: -----------------------------------------------------------------------


def test_squashfs_source_errors_are_one_line(tmp_path: Path) -> None:
    d = tmp_path / "d"
    one_line_error(["build", "x", "--rootfs", f"squashfs:{tmp_path}/nope.img", "--data-dir", str(d)],
                   f"--rootfs squashfs:{tmp_path}/nope.img: no such file", d)
    one_line_error(["build", "x", "--rootfs", f"squashfs:{tmp_path}", "--data-dir", str(d)],
                   "is a directory, not a squashfs file", d)
    junk = tmp_path / "root.img"
    junk.write_bytes(b"\0" * 2000)
    one_line_error(["build", "x", "--rootfs", f"squashfs:{junk}", "--data-dir", str(d)],
                   f"--rootfs squashfs:{junk}: not a squashfs (no 'hsqs' magic at its start)", d)
    iso = pycdlib_iso(tmp_path / "l.iso", {"live/vmlinuz": b"k"})
    one_line_error(["build", "x", "--rootfs", f"squashfs:{iso}", "--data-dir", str(d)],
                   "not a squashfs", d)
    one_line_error(["build", "x", "--rootfs", "squashfs:", "--data-dir", str(d)], "nothing after 'squashfs:'", d)


def test_squashfs_with_a_good_magic_but_no_filesystem_leaves_nothing(tmp_path: Path) -> None:
    """The magic passes the early check; unsquashfs then refuses it, and nothing is installed."""
    bad = tmp_path / "bad.sq"
    bad.write_bytes(b"hsqs" + b"\0" * 24 + (4).to_bytes(2, "little") + b"\xff" * 4000)
    one_line_error(["build", "x", "--rootfs", f"squashfs:{bad}", "--data-dir", str(tmp_path / "d")],
                   "unsquashfs cannot read it", tmp_path / "d")


def test_squashfs_source_is_used_as_it_is(tmp_path: Path) -> None:
    src = liveos_squashfs(tmp_path / "src")
    data = tmp_path / "data"
    proc = subprocess.run(IMAGE_CLI + ["build", "lo", "--rootfs", f"squashfs:{src}", "--data-dir", str(data)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = load_manifest(data, "lo")
    img = data / "images" / "lo"
    assert (img / ROOTFS).read_bytes() == src.read_bytes()  # not rebuilt: the very same bytes
    assert m.files[ROOTFS].sha256 == sha(src) and m.files[ROOTFS].size == src.stat().st_size
    assert m.source == f"squashfs:{src}" and m.root_image == "LiveOS/rootfs.img" and m.source_member == ""
    assert 'root_image = "LiveOS/rootfs.img"' in (img / "image.toml").read_text()
    assert not [p for p in (data / "images").iterdir() if p.name.startswith(".")]


def test_iso_source_build_streams_the_member(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\n")
    sqf = mksquashfs(root, tmp_path / "filesystem.squashfs")
    iso = pycdlib_iso(tmp_path / "u.iso", {"casper/filesystem.squashfs": sqf.read_bytes(),
                                           "casper/vmlinuz": b"k"})
    data = tmp_path / "data"
    proc = subprocess.run(IMAGE_CLI + ["build", "u", "--rootfs", f"iso:{iso}", "--data-dir", str(data)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = load_manifest(data, "u")
    assert m.source_member == "casper/filesystem.squashfs" and m.root_image == ""
    assert m.files[ROOTFS].sha256 == sha(sqf)
    assert parse_source(f"iso:{iso}").member == "casper/filesystem.squashfs"


@pytest.mark.parametrize("inner", ["rootfs.img", "ext3fs.img"])
def test_liveos_image_is_found(tmp_path: Path, inner: str) -> None:
    src = liveos_squashfs(tmp_path, inner=inner)
    assert liveos_image(src, "t") == f"LiveOS/{inner}"


def test_plain_squashfs_has_no_liveos_image(tmp_path: Path) -> None:
    t = tmp_path / "t"
    (t / "LiveOS").mkdir(parents=True)
    (t / "LiveOS" / "other.img").write_bytes(b"x")
    (t / "rootfs.img").write_bytes(b"x")  # not under LiveOS/: an ordinary file of an ordinary root
    assert liveos_image(mksquashfs(t, tmp_path / "p.sq"), "t") == ""


def test_ext4_image_made_without_mounting(tmp_path: Path) -> None:
    t = tmp_path / "t"
    (t / "etc").mkdir(parents=True)
    (t / "etc" / "hello").write_text("hi\n")
    img = ext4_image(t, tmp_path / "r.img", size_mb=8)
    out = subprocess.run(["debugfs", "-R", "cat /etc/hello", str(img)], capture_output=True, text=True)
    assert out.stdout == "hi\n", out.stderr


def test_parse_source_classifies_live_media(tmp_path: Path, sq: bytes) -> None:
    (tmp_path / "r.sq").write_bytes(sq)
    s = parse_source(f"squashfs:{tmp_path / 'r.sq'}")
    assert (s.kind, s.arg, s.member) == ("squashfs", str(tmp_path / "r.sq"), "")
    iso = pycdlib_iso(tmp_path / "d.iso", {"live/filesystem.squashfs": sq})
    s = parse_source(f"iso:{iso}")
    assert (s.kind, s.arg, s.member) == ("iso", str(iso), "live/filesystem.squashfs")
    (tmp_path / "x").write_text("x")
    with pytest.raises(ImageError, match="not a squashfs"):
        parse_source(f"squashfs:{tmp_path / 'x'}")


# --- ext4 for the LiveOS image, in the initramfs ---------------------------------------


@pytest.mark.parametrize("flavor", ["debian", "debian:generic"])
def test_initramfs_carries_ext4_and_its_dependencies(flavor: str) -> None:
    from ramboot.images.initramfs import ModuleIndex, select_modules
    from ramboot.images.kernel import resolve_kernel

    k = resolve_kernel(flavor, QUIET)
    idx = ModuleIndex.load(k)
    mods, _nics = select_modules(k, idx)
    if "ext4" in idx.builtin:  # the cloud kernel has ext4, jbd2 and crc16 built in
        assert "ext4" not in mods
    else:  # the generic one has them as modules: modules.dep's closure, and the crc32c its softdep names
        assert {"ext4", "jbd2", "mbcache", "crc16"} <= set(mods), mods
        assert {"crc32c_generic", "crc32c_intel"} & set(mods), mods
    assert {"loop", "squashfs", "overlay"} <= set(mods) | idx.builtin


def test_fedora_style_iso_records_its_liveos_image(tmp_path: Path) -> None:
    """iso: on a Fedora-style ISO: LiveOS/squashfs.img streamed out, its LiveOS/rootfs.img recorded."""
    inner = liveos_squashfs(tmp_path / "src")
    top = tmp_path / "top"
    (top / "LiveOS").mkdir(parents=True)
    (top / "LiveOS" / "squashfs.img").write_bytes(inner.read_bytes())
    iso = xorriso_iso(top, tmp_path / "fedora.iso", volid="Fedora-WS-Live-40")
    data = tmp_path / "data"
    proc = subprocess.run(IMAGE_CLI + ["build", "fed", "--rootfs", f"iso:{iso}", "--data-dir", str(data)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = load_manifest(data, "fed")
    assert (m.source_member, m.root_image) == ("LiveOS/squashfs.img", "LiveOS/rootfs.img")
    assert m.files[ROOTFS].sha256 == sha(inner)
