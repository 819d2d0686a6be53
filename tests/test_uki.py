"""The images' UKIs (uki.py): Debian's systemd-stub with the image's kernel and initrd in their
own sections at the right places, built again when what they hold changes, and never built
from a file the image's directory reaches through a symlink."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import write_fake_image
from ramboot import render, uki
from ramboot.namespace import Namespace, PathRefused, StaticFile
from ramboot.proto.pxe import Client
from ramboot.tls import CaArchive, ca_cpio

MEASURED = "[security]\ntpm_measured = true\n"


def _need_stub() -> None:
    if not uki.STUB.is_file():
        pytest.fail(f"{uki.STUB} missing: run `make setup` (systemd-boot-efi)")


def _objdump(path: Path) -> dict[str, tuple[int, int, int]]:
    """objdump's view of the sections: name -> (size, VMA, file offset)."""
    out = subprocess.run(["objdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    return {m[1]: (int(m[2], 16), int(m[3], 16), int(m[4], 16))
            for m in re.finditer(r"^\s*\d+ (\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", out, re.M)}


def test_the_uki_holds_the_kernel_and_initrd_above_the_stub(data_dir: Path, make_booter) -> None:
    _need_stub()
    write_fake_image(data_dir, "demo")
    kernel, initrd = os.urandom(300_000), os.urandom(1_500_001)
    (data_dir / "images/demo/vmlinuz").write_bytes(kernel)
    (data_dir / "images/demo/initrd.img").write_bytes(initrd)
    ca = ca_cpio(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    cache = uki.UkiCache(data_dir / "images")
    path = cache.path("demo", ca)
    pe = path.read_bytes()
    secs = {s.name: s for s in uki.sections(pe)}
    stub_top = max(s.vma + s.raw_size for s in uki.sections(uki.STUB.read_bytes()))
    # Each of ours holds exactly what it should, measured size (VirtualSize) = the data's size.
    for name, data in ((".osrel", b'ID=ramboot\nNAME="ramboot image demo"\n'), (".linux", kernel),
                       (".initrd", ca + initrd)):
        s = secs[name]
        assert s.size == len(data) <= s.raw_size, s
        assert pe[s.offset:s.offset + s.size] == data, name
        assert s.vma % uki.ALIGN == 0 and s.vma >= stub_top, s
    assert ".cmdline" not in secs  # the command line is iPXE's, this boot's credential in it
    order = sorted(secs.values(), key=lambda s: s.vma)
    assert all(a.vma + a.size <= b.vma for a, b in zip(order, order[1:], strict=False)), order
    # objdump reads the same table.
    assert {n: (s.size, s.vma, s.offset) for n, s in secs.items() if n.startswith((".osrel", ".linux", ".initrd"))} \
        == {n: v for n, v in _objdump(path).items() if n in (".osrel", ".linux", ".initrd")}

    # The same inputs: the same file, not built again; a changed initrd, or CA: built again.
    ino = path.stat().st_ino
    assert cache.path("demo", ca).stat().st_ino == ino
    (data_dir / "images/demo/initrd.img").write_bytes(initrd + b"\0" * 4)
    again = cache.path("demo", ca)
    s = {s.name: s for s in uki.sections(again.read_bytes())}[".initrd"]
    assert s.size == len(ca) + len(initrd) + 4 and again.stat().st_ino != ino
    assert {s.name: s for s in uki.sections(cache.path("demo", None).read_bytes())}[".initrd"].size == len(initrd) + 4
    # Built from the same inputs by another server: byte for byte the same (PCR 4 and 11 stay).
    assert uki.UkiCache(data_dir / "images").path("demo", None).read_bytes() == cache.path("demo", None).read_bytes()


def test_two_workers_do_not_rebuild_each_others_uki(data_dir: Path) -> None:
    """Each worker process has its own cache: when one builds the UKI again (the same bytes, a new
    inode), the other takes that file once its hash matches, and neither builds it again after."""
    _need_stub()
    write_fake_image(data_dir, "demo")
    one, two = uki.UkiCache(data_dir / "images"), uki.UkiCache(data_dir / "images")
    one.path("demo", None)
    ino = two.path("demo", None).stat().st_ino  # built by the second: a new inode
    for cache in (one, two, one, two):
        assert cache.path("demo", None).stat().st_ino == ino
    # Different bytes under the name (not what this cache built): built again.
    out = data_dir / "images/demo" / uki.NAME
    out.unlink()
    out.write_bytes(b"MZ someone else's")
    assert one.path("demo", None).read_bytes() != b"MZ someone else's"


def test_the_server_serves_the_uki_and_the_script_loads_it_under_uefi(data_dir: Path, make_booter) -> None:
    _need_stub()
    write_fake_image(data_dir, "demo")
    booter = make_booter(MEASURED)
    ns = Namespace(data_dir, booter, uki=uki.UkiCache(data_dir / "images"))
    got = ns.resolve("images/demo/ramboot-uki.efi")
    assert isinstance(got, StaticFile) and got.kind == "kernel"
    assert {s.name for s in uki.sections(got.path.read_bytes())} >= {".linux", ".initrd", ".osrel"}
    d = booter.decide(Client("52:54:00:00:00:21", asks="ipxe-script"))
    assert d is not None and d.uki == "images/demo/ramboot-uki.efi"
    script = render.ipxe_script(d, "TOKEN")
    # Under UEFI the UKI with the command line alone; under BIOS kernel and initrd as before.
    assert f"iseq ${{platform}} efi || goto ramboot_kernel\nkernel {d.http_base}/images/demo/ramboot-uki.efi " \
        f"{d.cmdline} ramboot.token=TOKEN || goto ramboot_retry\nboot || goto ramboot_retry\n:ramboot_kernel\n" \
        f"kernel {d.http_base}/images/demo/vmlinuz initrd=" in script, script
    assert render.ipxe_uki_load_options(d, "T") == f"ramboot-uki.efi {d.cmdline} ramboot.token=T"
    # Without measured boot: no UKI in the decision, none served (a file of that name is not ours).
    plain = make_booter()
    d = plain.decide(Client("52:54:00:00:00:21", asks="ipxe-script"))
    assert d is not None and d.uki is None and "uki" not in render.ipxe_script(d, "T")
    assert Namespace(data_dir, plain).resolve("images/demo/ramboot-uki.efi") is None


def test_a_uki_shipped_with_an_image_is_not_served_as_ours(data_dir: Path, make_booter) -> None:
    _need_stub()
    write_fake_image(data_dir, "demo")
    (data_dir / "images/demo/ramboot-uki.efi").write_bytes(b"MZ the image author's own")
    ns = Namespace(data_dir, make_booter(MEASURED), uki=uki.UkiCache(data_dir / "images"))
    got = ns.resolve("images/demo/ramboot-uki.efi")
    assert isinstance(got, StaticFile) and b"the image author's own" not in got.path.read_bytes()


@pytest.mark.parametrize("hostile", ["initrd-outside", "kernel-inside-link", "image-dir-link", "initrd-fifo"])
def test_a_hostile_image_gets_no_uki(data_dir: Path, make_booter, tmp_path: Path, hostile: str) -> None:
    _need_stub()
    write_fake_image(data_dir, "demo")
    img = data_dir / "images/demo"
    secret = tmp_path / "secret"
    secret.write_bytes(b"the server's secret")
    if hostile == "initrd-outside":  # a symlink out of the image: its bytes would go to any node
        (img / "initrd.img").unlink()
        (img / "initrd.img").symlink_to(secret)
    elif hostile == "kernel-inside-link":  # even one that stays inside: images hold regular files
        (img / "vmlinuz").unlink()
        (img / "vmlinuz").symlink_to(img / "rootfs.squashfs")
    elif hostile == "image-dir-link":
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        for f in img.iterdir():
            (outside / f.name).write_bytes(f.read_bytes())
        (data_dir / "images/evil").symlink_to(outside)
    else:
        (img / "initrd.img").unlink()
        os.mkfifo(img / "initrd.img")
    ns = Namespace(data_dir, make_booter(MEASURED), uki=uki.UkiCache(data_dir / "images"))
    image = "evil" if hostile == "image-dir-link" else "demo"
    with pytest.raises(PathRefused, match="no UKI"):
        ns.resolve(f"images/{image}/ramboot-uki.efi")
    assert not (data_dir / f"images/{image}/{uki.NAME}").exists()


def test_the_ca_archive_goes_first_in_the_ukis_initrd(data_dir: Path, make_booter, tmp_path: Path) -> None:
    """With an HTTPS listener the script loads ca.cpio before the image's initrd: the UKI's
    initrd is the same two, in that order."""
    _need_stub()
    write_fake_image(data_dir, "demo")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    ns = Namespace(data_dir, make_booter(MEASURED), ca=CaArchive(ca), uki=uki.UkiCache(data_dir / "images"))
    got = ns.resolve("images/demo/ramboot-uki.efi")
    assert isinstance(got, StaticFile)
    pe = got.path.read_bytes()
    s = {s.name: s for s in uki.sections(pe)}[".initrd"]
    assert pe[s.offset:s.offset + s.size] == CaArchive(ca).data() + b"initrd"
