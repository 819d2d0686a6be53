"""The server's TPM2 MakeCredential, proven against a real TPM's ActivateCredential (swtpm).

TPM 2.0 Part 1 §24 and Part 3 §12.5/12.6: only the TPM holding the EK, with the AK named
in the credential loaded, recovers the secret; the byte format is tpm2-tools'."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ramboot import tpm
from tpm_sim import Tpm, swtpm


@pytest.fixture
def pair(tmp_path: Path):
    with swtpm(tmp_path / "a") as a, swtpm(tmp_path / "b") as b:
        yield a, b


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_make_credential_opens_only_in_the_ek_tpm(pair: tuple[Tpm, Tpm], alg: str) -> None:
    a, b = pair
    ek_raw, ak_raw = a.ek_ak(alg)
    ek, ak = tpm.parse_public(ek_raw), tpm.parse_public(ak_raw)
    tpm.check_ek(ek)
    tpm.check_ak(ak)
    assert ak.name == (a.root / "ak.name").read_bytes()  # the name tpm2-tools computed
    assert isinstance(ek.key, ec.EllipticCurvePublicKey) == (alg == "ecc")
    secret = bytes(range(1, 33))
    blob = tpm.make_credential(ek, ak.name, secret)
    assert a.activate(blob) == secret
    # Another TPM (its own EK, its own AK under the same name's rules) cannot open it.
    b.ek_ak(alg)
    assert b.activate(blob) is None
    # Bound to the AK's name: wrapped for another name, the TPM refuses (integrity check).
    other = tpm.make_credential(ek, tpm.parse_public(b.ek_ak(alg)[1]).name, secret)
    assert a.activate(other) is None


def test_ek_cert_from_nv(tmp_path: Path) -> None:
    with swtpm(tmp_path / "a") as a, swtpm(tmp_path / "b") as b:
        ek = tpm.parse_public(a.ek_ak()[0])
        a.run("tpm2_nvread", "-o", "ekcert.der", hex(tpm.EK_CERT_NV[tpm.ALG_RSA]))
        cert = tpm.parse_ek_cert((a.root / "ekcert.der").read_bytes(), ek)
        assert "swtpm" in cert.issuer.lower()
        b.run("tpm2_nvread", "-o", "ekcert.der", hex(tpm.EK_CERT_NV[tpm.ALG_RSA]))
        with pytest.raises(tpm.TpmError, match="another key"):
            tpm.parse_ek_cert((b.root / "ekcert.der").read_bytes(), ek)


def test_roles_are_checked(tmp_path: Path) -> None:
    with swtpm(tmp_path / "a") as a:
        ek_raw, ak_raw = a.ek_ak()
    ek, ak = tpm.parse_public(ek_raw), tpm.parse_public(ak_raw)
    with pytest.raises(tpm.TpmError, match="not an attestation key"):
        tpm.check_ak(ek)
    with pytest.raises(tpm.TpmError, match="not an endorsement key"):
        tpm.check_ek(ak)
    assert ek.fingerprint.startswith("sha256:") and ek.fingerprint != ak.fingerprint


def test_kdfa_known_answer() -> None:
    """KDFa is SP 800-108 counter mode: the first block is HMAC(key, 1 || label 0 || u || v || bits)."""
    import hashlib
    import hmac
    key = b"k" * 32
    want = hmac.new(key, struct.pack(">I", 1) + b"STORAGE\0" + b"u" + b"v" + struct.pack(">I", 128),
                    hashlib.sha256).digest()[:16]
    assert tpm.kdfa(0x000B, key, b"STORAGE", b"u", b"v", 128) == want
    assert len(tpm.kdfa(0x000B, key, b"INTEGRITY", b"", b"", 512)) == 64


@pytest.mark.parametrize("data, why", [
    (b"", "bytes is not"),
    (b"\x00" * 2000, "bytes is not"),
    (struct.pack(">HHI", 1, 0x000B, 0), "truncated"),
    (struct.pack(">HHIH", 0x0025, 0x000B, 0, 0) + struct.pack(">H", 0x0010), "neither RSA nor ECC"),
    (struct.pack(">HHIH", 1, 0x0004, 0, 0), "hash algorithm"),
])
def test_hostile_public_areas(data: bytes, why: str) -> None:
    with pytest.raises(tpm.TpmError, match=why):
        tpm.parse_public(data)


def test_trailing_bytes_refused(tmp_path: Path) -> None:
    with swtpm(tmp_path / "a") as a:
        ek_raw, _ = a.ek_ak()
    with pytest.raises(tpm.TpmError, match="trailing"):
        tpm.parse_public(ek_raw[2:] + b"\0")
