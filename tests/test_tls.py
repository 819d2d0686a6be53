"""HTTPS: the CA and certificate `serve` makes (once, kept, 0600), the TLS listener of a real
`ramboot serve` with curl pinning that CA (and refusing another), ca.cpio over TFTP and
HTTP, the boot scripts that load it, and the curl the built initrd carries."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from dhcp_netns import SERVER_IP, NetnsPair
from directory_fakes import FakeDirectory
from images_vm import demo_image  # noqa: F401  (session fixture)
from ramboot import render, tls
from ramboot.config import ConfigError, parse_config
from ramboot.images.manifest import INITRD
from ramboot.inventory.records import NodeSpec
from ramboot.policy import Booter
from ramboot.proto.pxe import Client

RAMBOOT = [str(Path(sys.executable).with_name("ramboot"))]
MAC = "52:54:00:12:34:56"
TOKEN = "tls-test-token"
CLIENT_IP = "10.231.7.50"


def _config(data: Path, extra: str = ""):
    return parse_config(f'data_dir = "{data}"\n{extra}')


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _san(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
                          capture_output=True, text=True, check=True).stdout


def test_ca_and_certificate_are_made_once_and_kept_private(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    files = tls.ensure(cfg, "10.1.2.3")
    d = tmp_path / "tls"
    assert _mode(d) == 0o700
    for name in ("ca.key", "key.pem", "ca.pem", "cert.pem"):
        assert _mode(d / name) == 0o600, name
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert tls.ensure(cfg, "10.1.2.3") == files
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # reused, not made again
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(files.ca), str(files.cert)], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    san = _san(files.cert)
    for name in ("IP Address:10.1.2.3", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1", "DNS:localhost"):
        assert name in san, san
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(files.ca)], capture_output=True,
                             text=True, check=True).stdout
    assert "ramboot CA" in subject


def test_certificate_is_issued_again_when_names_change_or_it_nears_its_end(tmp_path: Path, monkeypatch) -> None:
    tls.ensure(_config(tmp_path), "10.1.2.3")
    ca, cert = (tmp_path / "tls/ca.pem").read_bytes(), (tmp_path / "tls/cert.pem").read_bytes()
    files = tls.ensure(_config(tmp_path, '[http]\nbind = "10.9.9.9"\n'), "10.1.2.4")
    assert files.ca.read_bytes() == ca  # the CA is kept: nodes' pins stay good
    assert files.cert.read_bytes() != cert
    san = _san(files.cert)
    assert "IP Address:10.1.2.4" in san and "IP Address:10.9.9.9" in san and "10.1.2.3" not in san
    again = files.cert.read_bytes()
    monkeypatch.setattr(tls, "RENEW_DAYS", tls.CERT_DAYS + 1)  # every certificate is now "near its end"
    tls.ensure(_config(tmp_path, '[http]\nbind = "10.9.9.9"\n'), "10.1.2.4")
    assert files.cert.read_bytes() != again and files.ca.read_bytes() == ca


def test_operator_certificate_is_used_as_given(tmp_path: Path) -> None:
    own = tls.ensure(_config(tmp_path / "own"), "10.1.2.3")  # any CA-signed pair will do
    files = tls.ensure(_config(tmp_path, f'[tls]\ncert = "{own.cert}"\nkey = "{own.key}"\n'), "10.1.2.3")
    assert (files.cert, files.key, files.ca) == (own.cert, own.key, own.cert)  # nodes pin the chain given
    assert not (tmp_path / "tls").exists()
    files = tls.ensure(_config(tmp_path, f'[tls]\ncert = "{own.cert}"\nkey = "{own.key}"\nca = "{own.ca}"\n'), "x")
    assert files.ca == own.ca
    with pytest.raises(ConfigError, match="no such file"):
        tls.ensure(_config(tmp_path, f'[tls]\ncert = "{tmp_path}/none.pem"\nkey = "{own.key}"\n'), "10.1.2.3")


def test_ca_cpio_unpacks_to_etc_ramboot_ca_pem(tmp_path: Path) -> None:
    pem = tls.ensure(_config(tmp_path), "10.1.2.3").ca.read_bytes()
    archive = tls.ca_cpio(pem)
    assert len(archive) % 512 == 0
    listed = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True).stdout.split()
    assert listed == [b"etc", b"etc/ramboot", b"etc/ramboot/ca.pem"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=out, check=True)
    assert (out / "etc/ramboot/ca.pem").read_bytes() == pem


@pytest.mark.parametrize("https_port, named", [(443, True), (0, False)])
def test_boot_scripts_load_ca_cpio_before_the_image_initrd(tmp_path: Path, https_port: int, named: bool) -> None:
    write_fake_image(tmp_path, "demo")
    cfg = _config(tmp_path, f"[http]\nhttps_port = {https_port}\n")
    b = Booter(cfg, FakeDirectory(NodeSpec(MAC, image="demo")), "172.22.33.2")
    ipxe = render.ipxe_script(b.decide(Client(MAC, ipxe=True)))
    pxe = render.pxelinux_config(b.decide(Client(MAC, arch=0, asks="pxelinux-cfg")))
    grub = render.grub_cfg(b.decide(Client(MAC, arch=7, asks="grub-cfg")))
    if named:
        lines = ipxe.splitlines()
        initrd = next(i for i, ln in enumerate(lines) if ln.startswith("initrd "))
        assert lines[initrd:initrd + 2] == ["initrd http://172.22.33.2/ca.cpio || goto ramboot_retry",
                                            "initrd http://172.22.33.2/images/demo/initrd.img || goto ramboot_retry"]
        assert " initrd=ca.cpio initrd=initrd.img " in ipxe  # the EFI stub loads both, in this order
        assert "  INITRD ca.cpio,images/demo/initrd.img\n" in pxe
        assert "\ninitrd /ca.cpio /images/demo/initrd.img\n" in grub
    else:
        assert "ca.cpio" not in ipxe + pxe + grub


# -- the real server ------------------------------------------------------------------
def _serve(pair: NetnsPair, tmp: Path, data: Path) -> tuple[subprocess.Popen, Path]:
    cfg = tmp / "ramboot.toml"
    cfg.write_text(
        f'data_dir = "{data}"\n[network]\ninterface = "{pair.srv_if}"\naddress = "{SERVER_IP}"\n'
        f'[dhcp]\nmode = "off"\n[tftp]\nport = 69\n[http]\nport = 80\nhttps_port = 443\n[api]\ntoken = "{TOKEN}"\n'
    )
    log = tmp / "serve.log"
    p = pair.popen(pair.srv_ns, *RAMBOOT, "serve", "--config", str(cfg), stdout=subprocess.DEVNULL,
                   stderr=open(log, "wb"))
    end = time.monotonic() + 30
    while time.monotonic() < end and b"serving on" not in log.read_bytes():
        assert p.poll() is None, log.read_text()
        time.sleep(0.1)
    assert b"serving on" in log.read_bytes(), log.read_text()
    return p, log


def _other_ca(tmp: Path) -> Path:
    return tls.ensure(_config(tmp / "other"), "10.1.2.3").ca


@pytest.mark.netns
def test_serve_listens_with_tls_and_curl_pins_its_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_image(data, "demo")
    big = data / "images/demo/big.bin"
    with open(big, "wb") as f:
        f.truncate(100 << 20)
    pair = NetnsPair()
    try:
        p, log = _serve(pair, tmp_path, data)
        ca = data / "tls/ca.pem"
        assert _mode(data / "tls/ca.key") == 0o600 and _mode(data / "tls/key.pem") == 0o600
        fp = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(ca)],
                            capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
        assert f"https on port 443; nodes pin {ca} (sha256 {fp})" in log.read_text()
        auth = ["-H", f"Authorization: Bearer {TOKEN}"]
        # loopback on the server, and the advertised address from another host
        got = pair.run(pair.srv_ns, "curl", "-sf", "--cacert", str(ca), *auth, "https://127.0.0.1/api/v1/nodes")
        assert got.stdout.startswith("[")
        pair.run(pair.cli_ns, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", pair.cli_if)
        got = pair.run(pair.cli_ns, "curl", "-sf", "--cacert", str(ca), *auth, f"https://{SERVER_IP}/api/v1/nodes")
        assert got.stdout.startswith("[")
        wrong = pair.run(pair.cli_ns, "curl", "-sf", "--cacert", str(_other_ca(tmp_path)), *auth,
                         f"https://{SERVER_IP}/api/v1/nodes", check=False)
        assert wrong.returncode == 60, wrong  # "peer certificate cannot be authenticated"
        assert pair.run(pair.cli_ns, "curl", "-sf", "-o", "/dev/null", f"http://{SERVER_IP}/api/v1/nodes", *auth)

        # a big file streams over TLS (no sendfile there: the copy path), whole
        got = pair.run(pair.cli_ns, "curl", "-sf", "--cacert", str(ca), "-o", "/dev/null", "-w",
                       "%{size_download} %{speed_download}", f"https://{SERVER_IP}/images/demo/big.bin", timeout=120)
        size, speed = got.stdout.split()
        assert int(size) == 100 << 20
        print(f"100 MiB over https: {float(speed) / 1e6:.0f} MB/s")

        # ca.cpio: the same bytes over TFTP and HTTP, holding the CA nodes pin
        over_http = pair.run(pair.cli_ns, "curl", "-sf", "-o", str(tmp_path / "h.cpio"), f"http://{SERVER_IP}/ca.cpio")
        over_tftp = pair.run(pair.cli_ns, "curl", "-sf", "-o", str(tmp_path / "t.cpio"), f"tftp://{SERVER_IP}/ca.cpio")
        assert over_http.returncode == over_tftp.returncode == 0
        archive = (tmp_path / "h.cpio").read_bytes()
        assert archive == (tmp_path / "t.cpio").read_bytes() == tls.ca_cpio(ca.read_bytes())
        listed = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True).stdout
        assert b"etc/ramboot/ca.pem" in listed.split()

        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        pair.close()


@pytest.mark.netns
def test_the_initrd_curl_fetches_over_https_pinning_ca_cpio(tmp_path: Path, demo_image: Path) -> None:  # noqa: F811
    """The built initrd, unpacked with ca.cpio over it as the kernel would, run in a chroot:
    its own curl (and libraries) fetches from the real server with the CA, and refuses another."""
    data = tmp_path / "data"
    write_fake_image(data, "demo")
    root = tmp_path / "root"
    root.mkdir()
    raw = subprocess.run(["zstd", "-dc", str(demo_image / INITRD)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-id", "--quiet"], input=raw, cwd=root, check=True)
    assert not (root / "etc/ramboot/ca.pem").exists()
    pair = NetnsPair()
    try:
        _serve(pair, tmp_path, data)
        got = subprocess.run(["ip", "netns", "exec", pair.srv_ns, "curl", "-sf", f"http://{SERVER_IP}/ca.cpio"],
                             capture_output=True, check=True).stdout
        subprocess.run(["cpio", "-id", "--quiet", "-u"], input=got, cwd=root, check=True)
        assert (root / "etc/ramboot/ca.pem").read_bytes() == (data / "tls/ca.pem").read_bytes()
        url = f"https://{SERVER_IP}/images/demo/initrd.img"
        ok = pair.run(pair.srv_ns, "chroot", str(root), "/bin/curl", "-sf", "--cacert", "/etc/ramboot/ca.pem", url,
                      check=False)
        assert ok.returncode == 0 and ok.stdout == "initrd", ok
        (root / "etc/ramboot/other.pem").write_bytes(_other_ca(tmp_path).read_bytes())
        bad = pair.run(pair.srv_ns, "chroot", str(root), "/bin/curl", "-sf", "--cacert", "/etc/ramboot/other.pem",
                       url, check=False)
        assert bad.returncode == 60, bad
    finally:
        pair.close()


def test_doctor_and_the_firewalld_service_know_the_https_port(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from ramboot.doctor import service_ports

    assert ("tcp", 443, "HTTPS") in service_ports(_config(tmp_path))
    assert ("tcp", 8443, "HTTPS") in service_ports(_config(tmp_path, "[http]\nhttps_port = 8443\n"))
    assert all(role != "HTTPS" for _p, _n, role in service_ports(_config(tmp_path, "[http]\nhttps_port = 0\n")))
    xml = ET.parse(Path(__file__).parent.parent / "deploy/firewalld/ramboot.xml")
    assert {"protocol": "tcp", "port": "443"} in [p.attrib for p in xml.iter("port")]
