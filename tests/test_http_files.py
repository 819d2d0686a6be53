"""HTTP file serving against real curl: byte-exact, Range, ETag/304, HEAD, traversal refused."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from httpserver import LiveServer

assert shutil.which("curl"), "curl is a required test peer (make setup installs it)"

MAC = "52:54:00:12:34:56"


@pytest.fixture
def srv(data_dir: Path):
    rootfs = os.urandom(3 * 1024 * 1024 + 17)
    write_fake_image(data_dir, "demo", rootfs=rootfs)
    (data_dir / "loaders").mkdir()
    (data_dir / "loaders" / "snponly.efi").write_bytes(b"EFI" * 1000)
    (data_dir / "images" / "demo" / "extra.bin").write_bytes(b"x" * 100)  # not in the manifest
    s = LiveServer(data_dir)
    s.rootfs = rootfs
    yield s
    s.close()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, timeout=20)


def headers_of(out: bytes) -> dict[str, str]:
    lines = out.decode("latin-1").split("\r\n")
    h = {"status": lines[0].split()[1]}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            h[k.strip().lower()] = v.strip()
    return h


def test_rootfs_byte_exact_with_manifest_etag(srv, tmp_path):
    out = tmp_path / "root"
    r = curl("-o", str(out), "-D", str(tmp_path / "h"), f"{srv.base}/images/demo/rootfs.squashfs")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == srv.rootfs
    h = headers_of((tmp_path / "h").read_bytes())
    assert h["status"] == "200"
    assert h["etag"] == f'"{hashlib.sha256(srv.rootfs).hexdigest()}"'
    assert h["accept-ranges"] == "bytes"
    assert int(h["content-length"]) == len(srv.rootfs)


def test_range_requests(srv, tmp_path):
    r = curl("-r", "100-199", f"{srv.base}/images/demo/rootfs.squashfs")
    assert r.stdout == srv.rootfs[100:200]
    r = curl("-D", "-", "-o", "/dev/null", "-r", "100-199", f"{srv.base}/images/demo/rootfs.squashfs")
    h = headers_of(r.stdout)
    assert h["status"] == "206" and h["content-range"] == f"bytes 100-199/{len(srv.rootfs)}"
    assert curl("-r", "-10", f"{srv.base}/images/demo/rootfs.squashfs").stdout == srv.rootfs[-10:]
    assert curl("-r", f"{len(srv.rootfs) - 5}-", f"{srv.base}/images/demo/rootfs.squashfs").stdout == srv.rootfs[-5:]
    # resume a partial download, as a retrying client does
    part = tmp_path / "part"
    part.write_bytes(srv.rootfs[:1000])
    assert curl("-C", "-", "-o", str(part), f"{srv.base}/images/demo/rootfs.squashfs").returncode == 0
    assert part.read_bytes() == srv.rootfs
    r = curl("-D", "-", "-o", "/dev/null", "-r", f"{len(srv.rootfs)}-", f"{srv.base}/images/demo/rootfs.squashfs")
    h = headers_of(r.stdout)
    assert h["status"] == "416" and h["content-range"] == f"bytes */{len(srv.rootfs)}"


def test_if_none_match_and_if_range(srv):
    url = f"{srv.base}/images/demo/rootfs.squashfs"
    etag = headers_of(curl("-sI", url).stdout)["etag"]
    h = headers_of(curl("-D", "-", "-o", "/dev/null", "-H", f"If-None-Match: {etag}", url).stdout)
    assert h["status"] == "304" and h["etag"] == etag
    h = headers_of(curl("-D", "-", "-o", "/dev/null", "-H", 'If-None-Match: "other", W/' + etag, url).stdout)
    assert h["status"] == "304"
    h = headers_of(curl("-D", "-", "-o", "/dev/null", "-H", 'If-None-Match: "other"', url).stdout)
    assert h["status"] == "200"
    # If-Range with a stale tag: the whole file, not the range
    r = curl("-D", "-", "-r", "0-9", "-H", 'If-Range: "stale"', url)
    assert headers_of(r.stdout)["status"] == "200"
    h = headers_of(curl("-D", "-", "-o", "/dev/null", "-H", 'If-Match: "stale"', url).stdout)
    assert h["status"] == "412"


def test_head_and_fallback_etag(srv):
    h = headers_of(curl("-I", f"{srv.base}/images/demo/extra.bin").stdout)
    assert h["status"] == "200" and h["content-length"] == "100"
    assert h["etag"].startswith('"64-')  # size (hex) and mtime: no manifest entry
    h = headers_of(curl("-I", f"{srv.base}/snponly.efi").stdout)
    assert h["status"] == "200" and h["content-length"] == "3000"
    assert curl(f"{srv.base}/snponly.efi").stdout == b"EFI" * 1000


def test_scripts(srv):
    r = curl(f"{srv.base}/boot.ipxe")
    assert r.stdout.startswith(b"#!ipxe\nisset ${uuid} && chain ")
    r = curl("-D", "-", f"{srv.base}/boot/52-54-00-12-34-56.ipxe")
    assert b"200" in r.stdout.split(b"\r\n")[0]
    assert b"kernel http://127.0.0.1:80/images/demo/vmlinuz" in r.stdout or b"kernel http://127.0.0.1/images/demo/vmlinuz" in r.stdout
    assert headers_of(curl("-D", "-", "-o", "/dev/null", f"{srv.base}/boot/not-a-mac.ipxe").stdout)["status"] == "404"


@pytest.mark.parametrize(
    "path",
    [
        "/images/../../etc/passwd",
        "/images/demo/../../../etc/passwd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/%2E%2E/demo/vmlinuz",
        "/images/demo%2fvmlinuz",
        "/images/demo%2Fvmlinuz",
        "/images\\demo\\vmlinuz",
        "/images/demo/%5c..%5cvmlinuz",
        "//etc/passwd",
        "/images/demo/./vmlinuz",
        "/images/%252e%252e/demo/vmlinuz",
        "/%00/etc/passwd",
    ],
)
def test_traversal_refused(srv, path):
    r = curl("--path-as-is", "-D", "-", "-o", "/dev/null", srv.base + path)
    status = headers_of(r.stdout)["status"]
    assert status in ("400", "403", "404"), (path, status)
    body = curl("--path-as-is", srv.base + path).stdout
    assert b"root:" not in body


def test_symlink_out_refused(srv, data_dir, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("top secret")
    (data_dir / "images" / "demo" / "leak").symlink_to(secret)
    r = curl("-D", "-", srv.base + "/images/demo/leak")
    assert headers_of(r.stdout)["status"] == "403"
    assert b"top secret" not in r.stdout


def test_served_files_become_events(srv, data_dir):
    srv.run(srv.events.mac_by_ip.__setitem__, "127.0.0.1", MAC)
    curl("-o", "/dev/null", f"{srv.base}/boot/{MAC.replace(':', '-')}.ipxe")
    curl("-o", "/dev/null", f"{srv.base}/images/demo/vmlinuz")
    curl("-o", "/dev/null", f"{srv.base}/images/demo/initrd.img")
    curl("-o", "/dev/null", f"{srv.base}/images/demo/rootfs.squashfs")
    curl("-I", f"{srv.base}/images/demo/rootfs.squashfs")  # HEAD: no event
    curl("-o", "/dev/null", f"{srv.base}/snponly.efi")
    deadline = time.time() + 5
    while time.time() < deadline:
        evs = srv.store.events.of(MAC)
        if len(evs) >= 5:
            break
        time.sleep(0.05)
    stages = [e.stage for e in evs]
    assert stages == ["script", "kernel", "initrd", "rootfs", "loader"]
    rootfs = evs[3]
    assert rootfs.detail["bytes"] == len(srv.rootfs) and rootfs.detail["seconds"] >= 0
