"""`ramboot image pull NAME --from URL`: every sha256 checked, identical files stored once."""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import write_fake_image
from ramboot.images.blobs import blob_path
from ramboot.images.errors import ImageError
from ramboot.images.manifest import load_manifest
from ramboot.images.pull import pull_image
from ramboot.lab.server import ramboot_cmd


@pytest.fixture
def source(tmp_path: Path):
    """Another server's data directory, served over HTTP on loopback (the same paths ramboot serves)."""
    src = tmp_path / "src"
    src.mkdir()
    handler = functools.partial(_Quiet, directory=str(src))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield src, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_pull_copies_verifies_and_links_blobs(source, tmp_path: Path) -> None:
    src, url = source
    write_fake_image(src, "a", rootfs=b"root-a" * 1000)
    write_fake_image(src, "b", rootfs=b"root-b" * 1000)  # the same kernel and initrd as "a"
    dest = tmp_path / "dest"
    m, fetched, reused = pull_image(dest, "a", url)
    assert reused == 0 and fetched == sum(e.size for e in m.files.values())
    assert load_manifest(dest, "a").files == load_manifest(src, "a").files
    for fname in ("vmlinuz", "initrd.img", "rootfs.squashfs"):
        assert (dest / "images/a" / fname).read_bytes() == (src / "images/a" / fname).read_bytes()
    m_b, fetched_b, reused_b = pull_image(dest, "b", url)
    assert reused_b == m_b.files["vmlinuz"].size + m_b.files["initrd.img"].size  # not fetched again
    assert fetched_b == m_b.files["rootfs.squashfs"].size
    ka, kb = dest / "images/a/vmlinuz", dest / "images/b/vmlinuz"
    assert os.path.samefile(ka, kb) and os.path.samefile(ka, blob_path(dest, m.files["vmlinuz"].sha256))
    assert not os.path.samefile(dest / "images/a/rootfs.squashfs", dest / "images/b/rootfs.squashfs")


def test_a_corrupted_file_is_refused_and_nothing_is_installed(source, tmp_path: Path) -> None:
    src, url = source
    write_fake_image(src, "a", rootfs=b"x" * 5000)
    (src / "images/a/rootfs.squashfs").write_bytes(b"y" * 5000)  # same size, other bytes
    dest = tmp_path / "dest"
    with pytest.raises(ImageError, match="rootfs.squashfs: sha256 .* refused"):
        pull_image(dest, "a", url)
    assert not (dest / "images/a").exists()
    assert [p.name for p in (dest / "images").iterdir()] == []  # the temporary folder is gone too


def test_pull_cli_is_one_line_on_error(tmp_path: Path) -> None:
    p = subprocess.run([*ramboot_cmd(), "image", "pull", "demo", "--from", "http://127.0.0.1:9", "--data-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("ramboot: error: "), p.stderr
