"""`debian:SUITE[:pkgs]`: the mirror comes from apt's own sources; a real mmdebstrap
build yields a root with systemd, networkd DHCP, the `booted` report and no shared
ssh host keys."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from ramboot.cli import main
from ramboot.images.debian import apt_sources, mirror_lines, parse_spec
from ramboot.images.errors import ImageError
from ramboot.images.manifest import load_manifest
from ramboot.images.rootfs import make_squashfs, parse_source, populate


def test_sources_from_both_apt_formats(tmp_path: Path) -> None:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# comment\ndeb [arch=amd64] http://mirror.invalid/debian bookworm main\n"
                                      "deb-src http://mirror.invalid/debian bookworm main\n")
    (etc / "sources.list.d/sec.sources").write_text(
        "Types: deb\nURIs: http://sec.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.invalid/x\nSuites: other\nEnabled: no\n")
    (etc / "sources.list.d/ignored.list.disabled").write_text("deb http://no.invalid/ x main\n")
    src = apt_sources(etc)
    assert src == [("http://mirror.invalid/debian", ["bookworm"]),
                   ("http://sec.invalid/debian-security", ["bookworm-security"])]
    assert mirror_lines("trixie", src) == ["deb http://mirror.invalid/debian trixie main",
                                          "deb http://sec.invalid/debian-security trixie-security main"]
    assert mirror_lines("sid", src) == ["deb http://mirror.invalid/debian sid main"]
    with pytest.raises(ImageError, match="no Debian archive"):
        mirror_lines("bookworm", [])


@pytest.mark.parametrize("spec", ["Bookworm", "bookworm:bad_pkg!", "../x"])
def test_bad_spec(spec: str) -> None:
    with pytest.raises(ImageError):
        parse_spec(spec)


def test_debian_root_is_bootable(tmp_path: Path) -> None:
    quiet = Console(file=io.StringIO())
    tree = populate(parse_source("debian:bookworm:openssh-server"), tmp_path, quiet)
    img = tmp_path / "rootfs.squashfs"
    make_squashfs(tree, img, quiet)
    ls = subprocess.run(["unsquashfs", "-lln", str(img)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"squashfs-root/(usr/)?sbin/init -> \S*/lib/systemd/systemd$", ls, re.M)
    for p in ("etc/systemd/network/50-ramboot.network", "usr/lib/ramboot/booted",
              "etc/systemd/system/multi-user.target.wants/ramboot-booted.service",
              "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
              "etc/systemd/system/multi-user.target.wants/ssh.service",
              "etc/systemd/system/ssh.service.wants/ramboot-ssh-keygen.service",
              "etc/systemd/journald.conf.d/ramboot.conf", "usr/sbin/sshd"):
        assert f"squashfs-root/{p}" in ls, p
    assert re.search(r"system-generators/systemd-gpt-auto-generator -> /dev/null$", ls, re.M)
    assert "ssh_host_" not in ls  # each node makes its own host keys at boot
    assert "autologin" not in ls  # the consoles ask for a login unless the operator picks --autologin
    assert img.stat().st_size < 120 * 1024 * 1024


def test_autologin_is_an_option_the_operator_picks(tmp_path: Path) -> None:
    """`image build --autologin`: root on every console, recorded in the manifest; refused where
    ramboot did not build the root."""
    data = tmp_path / "data"
    r = CliRunner().invoke(main, ["image", "build", "demo", "--autologin", "--data-dir", str(data)])
    assert r.exit_code != 0 and "--autologin: only for the Debian roots" in r.output, r.output
    r = CliRunner().invoke(main, ["image", "build", "deb", "--rootfs", "debian:bookworm", "--kernel", "debian",
                                  "--autologin", "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    assert load_manifest(data, "deb").autologin is True
    img = data / "images" / "deb" / "rootfs.squashfs"
    for unit in ("getty@.service.d", "serial-getty@.service.d"):
        conf = subprocess.run(["unsquashfs", "-cat", str(img), f"etc/systemd/system/{unit}/ramboot-autologin.conf"],
                              capture_output=True, text=True, check=True).stdout
        assert "--autologin root" in conf, conf
