"""`ramboot image pull NAME --from URL`: every sha256 checked, identical files stored once.

The source is hostile input: its manifest is validated (a sha256 that is a path, a
file name that is a path, are refused in one line), it must come over HTTPS from a
server whose certificate chains to the CA given (a throwaway CA made here with
openssl; a certificate from another CA is one line), and plain HTTP needs
`--insecure-http`.
"""

from __future__ import annotations

import functools
import os
import ssl
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


def make_ca(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signs for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    d.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", *ec, "-keyout", d / "key.pem", "-out", d / "srv.csr", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                           "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    subprocess.run(["openssl", "x509", "-req", "-in", d / "srv.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
                    "-CAcreateserial", "-out", d / "cert.pem", "-days", "2", "-extfile", d / "ext"],
                   check=True, capture_output=True)
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


def serve_dir(src: Path, tls: tuple[Path, Path] | None = None):
    """`src` served on loopback (the same paths ramboot serves), over TLS when given (cert, key)."""
    handler = functools.partial(_Quiet, directory=str(src))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def source(tmp_path: Path):
    """Another server's data directory over plain HTTP (pulled with insecure_http)."""
    src = tmp_path / "src"
    src.mkdir()
    httpd, url = serve_dir(src)
    yield src, url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tls_source(tmp_path: Path):
    """The same over HTTPS with a certificate from a throwaway CA: (data dir, URL, ca.pem)."""
    src = tmp_path / "src"
    src.mkdir()
    ca, cert, key = make_ca(tmp_path / "ca", "rbi-test-ca")
    httpd, url = serve_dir(src, (cert, key))
    yield src, url, ca
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
    m, fetched, reused = pull_image(dest, "a", url, insecure_http=True)
    assert reused == 0 and fetched == sum(e.size for e in m.files.values())
    assert load_manifest(dest, "a").files == load_manifest(src, "a").files
    for fname in ("vmlinuz", "initrd.img", "rootfs.squashfs"):
        assert (dest / "images/a" / fname).read_bytes() == (src / "images/a" / fname).read_bytes()
    m_b, fetched_b, reused_b = pull_image(dest, "b", url, insecure_http=True)
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
        pull_image(dest, "a", url, insecure_http=True)
    assert not (dest / "images/a").exists()
    assert [p.name for p in (dest / "images").iterdir()] == []  # the temporary folder is gone too


def test_pull_cli_is_one_line_on_error(tmp_path: Path) -> None:
    p = subprocess.run([*ramboot_cmd(), "image", "pull", "demo", "--from", "http://127.0.0.1:9", "--data-dir",
                        str(tmp_path), "--insecure-http"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("ramboot: error: "), p.stderr


def pull_cli(dest: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ramboot_cmd(), "image", "pull", "a", "--from", url, "--data-dir", str(dest), *extra],
                          capture_output=True, text=True, timeout=60)


def one_line(p: subprocess.CompletedProcess, match: str) -> None:
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("ramboot: error: "), p.stderr
    assert match in p.stderr, p.stderr


def test_pull_over_https_checks_the_source_ca(tls_source, tmp_path: Path) -> None:
    src, url, ca = tls_source
    write_fake_image(src, "a")
    dest = tmp_path / "dest"
    p = pull_cli(dest, url, "--ca", str(ca))
    assert p.returncode == 0, p.stderr
    assert (dest / "images/a/rootfs.squashfs").read_bytes() == b"root"
    # The local data directory's CA is the default (every server of a cluster shares it).
    other = tmp_path / "dest2"
    (other / "tls").mkdir(parents=True)
    (other / "tls/ca.pem").write_bytes(ca.read_bytes())
    assert pull_cli(other, url).returncode == 0


def test_a_source_with_another_cas_certificate_is_refused(tls_source, tmp_path: Path) -> None:
    src, url, _ca = tls_source
    write_fake_image(src, "a")
    wrong, _, _ = make_ca(tmp_path / "other-ca", "rbi-other-ca")
    dest = tmp_path / "dest"
    one_line(pull_cli(dest, url, "--ca", str(wrong)), "the server's certificate is not trusted")
    one_line(pull_cli(dest, url), "the server's certificate is not trusted")  # the system store knows it not
    assert not (dest / "images/a").exists()


def test_plain_http_needs_insecure_http(source, tmp_path: Path) -> None:
    src, url = source
    write_fake_image(src, "a")
    one_line(pull_cli(tmp_path / "dest", url), "give --insecure-http")
    assert pull_cli(tmp_path / "dest", url, "--insecure-http").returncode == 0


def _forge(src: Path, edit) -> None:
    """Rewrite the source's manifest of image a with `edit(text) -> text`."""
    man = src / "images/a/image.toml"
    man.write_text(edit(man.read_text()))


@pytest.mark.parametrize("case,match", [
    ("sha-path", "is not 64 lowercase hex digits"),
    ("sha-dotdot", "is not 64 lowercase hex digits"),
    ("file-path", "is not a plain name"),
    ("size", "is not a non-negative integer"),
    ("name", "is not an image name"),
])
def test_a_hostile_manifest_is_refused_in_one_line(tls_source, tmp_path: Path, case: str, match: str) -> None:
    """`sha256 = "/etc/…"` hard-linked that host file into images/NAME, where it is served."""
    src, url, ca = tls_source
    m = write_fake_image(src, "a")
    secret = tmp_path / "host-key"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- rbi")
    real = m.files["vmlinuz"].sha256
    if case == "sha-path":
        _forge(src, lambda t: t.replace(f'sha256 = "{real}"', f'sha256 = "{secret}"'))
    elif case == "sha-dotdot":
        _forge(src, lambda t: t.replace(f'sha256 = "{real}"', f'sha256 = "../../../../../../..{secret}"'))
    elif case == "file-path":
        _forge(src, lambda t: t.replace('[files."vmlinuz"]', '[files."../../vmlinuz"]'))
    elif case == "size":
        _forge(src, lambda t: t.replace("size = 6\n", "size = -6\n", 1))
    else:
        _forge(src, lambda t: t.replace('name = "a"', 'name = "a\\nb"'))
    dest = tmp_path / "dest"
    one_line(pull_cli(dest, url, "--ca", str(ca)), match)
    assert not (dest / "images/a").exists()
    assert secret.stat().st_nlink == 1  # never linked anywhere


def test_an_installed_manifest_is_checked_on_load_too(tmp_path: Path) -> None:
    from ramboot.images.manifest import ManifestError

    write_fake_image(tmp_path, "a")
    _forge(tmp_path, lambda t: t.replace('sha256 = "', 'sha256 = "/etc/shadow', 1))
    with pytest.raises(ManifestError, match="not 64 lowercase hex digits"):
        load_manifest(tmp_path, "a")
