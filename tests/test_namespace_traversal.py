"""No request ever escapes the data directory, over TFTP or HTTP."""

import os

import pytest

from conftest import write_fake_image
from ramboot.namespace import GeneratedFile, Namespace, PathRefused, StaticFile


@pytest.fixture
def ns(make_booter, data_dir):
    write_fake_image(data_dir, "demo")
    (data_dir / "loaders").mkdir()
    (data_dir / "loaders" / "undionly.kpxe").write_bytes(b"loader")
    (data_dir / "ramboot.db.secret").write_text("secret")
    return Namespace(data_dir, make_booter())


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "images/../../etc/passwd",
        "images/demo/../../ramboot.db.secret",
        "/etc/passwd",
        "images\\demo\\vmlinuz",
        "..\\..\\etc\\passwd",
        "images/%2e%2e/%2e%2e/etc/passwd",
        "%2e%2e/ramboot.db.secret",
        "images/demo/./vmlinuz",
        "images//demo/vmlinuz",
        "images/demo/vmlinuz\x00.txt",
        "",
    ],
)
def test_traversal_refused(ns, name):
    with pytest.raises(PathRefused):
        ns.resolve(name)


def test_symlink_out_of_data_dir_refused(ns, data_dir, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("no")
    os.symlink(outside, data_dir / "images" / "demo" / "evil")
    os.symlink("/etc", data_dir / "images" / "etcdir")
    with pytest.raises(PathRefused):
        ns.resolve("images/demo/evil")
    with pytest.raises(PathRefused):
        ns.resolve("images/etcdir/passwd")


def test_data_dir_files_outside_namespace_are_invisible(ns):
    assert ns.resolve("ramboot.db.secret") is None
    assert ns.resolve("images/demo") is None  # a directory is not a file


def test_resolves_static_and_generated(ns, data_dir):
    r = ns.resolve("images/demo/vmlinuz")
    assert isinstance(r, StaticFile) and r.kind == "kernel"
    assert ns.resolve("images/demo/rootfs.squashfs").kind == "rootfs"
    assert ns.resolve("undionly.kpxe").kind == "loader"
    assert ns.resolve("nothing.efi") is None
    cfg = ns.resolve("pxelinux.cfg/01-52-54-00-12-34-56")
    assert isinstance(cfg, GeneratedFile) and b"KERNEL images/demo/vmlinuz" in cfg.data
    assert ns.resolve("pxelinux.cfg/C0A80001") is None
    script = ns.resolve("boot/52-54-00-12-34-56.ipxe")
    assert isinstance(script, GeneratedFile) and script.data.startswith(b"#!ipxe")
    assert ns.resolve("boot/not-a-mac.ipxe") is None
    assert b"chain" in ns.resolve("boot.ipxe").data
