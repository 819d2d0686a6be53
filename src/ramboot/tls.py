"""The HTTPS listener's certificate, and the CA a node pins (`ca.cpio`).

Unless the operator gives `[tls] cert` and `[tls] key`, `serve` makes its own CA once
(`DATA/tls/ca.pem`, `ca.key`: EC P-256, which curl, OpenSSL and iPXE all take, valid
10 years) and a server certificate signed by it (`cert.pem`, `key.pem`) whose
subjectAltName holds every name a node or an operator may use for this server. The
certificate is issued again when those names change or it nears its end; the CA is
kept, so nodes' pins stay valid. Keys are 0600, the directory 0700.

A node learns the CA from `ca.cpio`, a tiny newc archive holding `etc/ramboot/ca.pem`
that the boot scripts load as an extra initrd before the image's (the kernel unpacks both
into its root; render.py says why first).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import Config, ConfigError

TLS_DIR = "tls"
CA_YEARS = 10
CERT_DAYS = 825  # what browsers and Apple's clients still take for a server certificate
RENEW_DAYS = 30  # issued again when it has less than this left
CA_PATH_IN_INITRD = "etc/ramboot/ca.pem"


@dataclass(frozen=True)
class TlsFiles:
    """What the listener serves with, and what nodes pin."""

    cert: Path  # PEM: the server certificate (and its chain)
    key: Path
    ca: Path  # PEM: the CA(s) nodes pin

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def fingerprint(self) -> str:
        """The sha256 of the (first) pinned CA certificate, as `openssl x509 -fingerprint -sha256` prints it."""
        der = x509.load_pem_x509_certificate(self.ca.read_bytes()).public_bytes(serialization.Encoding.DER)
        return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def server_names(config: Config, server_ip: str, *more: str) -> list[str]:
    """What the server certificate must name: the advertised addresses (IPv4, IPv6), a specific
    bind address, loopback and this host's name."""
    out = [server_ip, *more]
    bind = config.http.bind
    if bind not in ("0.0.0.0", "::", ""):
        out.append(bind)
    host = socket.gethostname()
    out += ["127.0.0.1", "::1", "localhost", host]
    if "." in host:
        out.append(host.split(".", 1)[0])
    return list(dict.fromkeys(out))


def ensure(config: Config, server_ip: str, *more: str) -> TlsFiles:
    """The listener's files: the operator's (`[tls] cert`/`key`), else ours in DATA/tls/,
    made or renewed here. Raises ConfigError on a file that cannot be read."""
    tls = config.tls
    if tls.cert is not None and tls.key is not None:
        for p in (tls.cert, tls.key, tls.ca):
            if p is not None and not p.is_file():
                raise ConfigError(f"tls: {p}: no such file")
        return TlsFiles(tls.cert, tls.key, tls.ca or tls.cert)
    d = Path(config.data_dir) / TLS_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca_cert, ca_key = load_or_make_ca(d)
    files = TlsFiles(d / "cert.pem", d / "key.pem", tls.ca or d / "ca.pem")
    wanted = server_names(config, server_ip, *more)
    if not _current(files.cert, ca_cert, wanted):
        _issue(d, ca_cert, ca_key, wanted)
    return files


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file 0600 from the start, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_or_make_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """DATA/tls/ca.pem and ca.key: read if there, else made once (nodes pin it)."""
    cert_p, key_p = d / "ca.pem", d / "ca.key"
    if cert_p.is_file() and key_p.is_file():
        key = serialization.load_pem_private_key(key_p.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"tls: {key_p}: not an EC key")
        return x509.load_pem_x509_certificate(cert_p.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ramboot CA {socket.gethostname()}"[:64])])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_p, _key_pem(key))
    _write_private(cert_p, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _san(wanted: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in wanted:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _current(cert_p: Path, ca: x509.Certificate, wanted: list[str]) -> bool:
    """True if the server certificate is there, from this CA, names exactly `wanted` and has time left."""
    try:
        cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return (cert.issuer == ca.subject
            and set(names) == set(_san(wanted))
            and cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS))


def _issue(d: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, wanted: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted[0])]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(min(now + datetime.timedelta(days=CERT_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_san(wanted)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(d / "key.pem", _key_pem(key))
    _write_private(d / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))


# -- ca.cpio ------------------------------------------------------------------------
def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries (directories: mode with S_IFDIR, no data);
    every timestamp and owner 0, so the same CA gives the same bytes."""
    out = bytearray()
    for ino, (path, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        name = path.encode() + b"\0"
        fields = (ino if path != "TRAILER!!!" else 0, mode, 0, 0, 1 if mode else 0, 0, len(data), 0, 0, 0, 0,
                  len(name), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + name
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


def ca_cpio(pem: bytes) -> bytes:
    """The extra initrd: `etc/ramboot/ca.pem` (and its directories)."""
    return newc([("etc", 0o40755, b""), ("etc/ramboot", 0o40755, b""), (CA_PATH_IN_INITRD, 0o100644, pem)])


class CaArchive:
    """`ca.cpio` for the namespace: built once, again only when the CA file changes."""

    def __init__(self, ca: Path):
        self.ca = ca
        self._key: tuple[int, int] | None = None
        self._data = b""

    def data(self) -> bytes:
        st = self.ca.stat()
        key = (st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._data, self._key = ca_cpio(self.ca.read_bytes()), key
        return self._data
