"""The TPM rule: a node whose TPM is enrolled gets its secrets only through that TPM.

It comes after the access rule (access.py), never instead of it: the request must already
hold this boot's credential from the node's address. Then:

- **Enrolment.** The initramfs sends its TPM's endorsement key (EK) and a fresh attestation
  key (AK). The first EK of a node is kept: `pending` until `ramboot node trust MAC`
  (`[security] tpm_enroll = "manual"`, the default) or `trusted` at once ("first-boot").
  A different EK later is refused, recorded as `untrusted-tpm` and kept to show.
- **The boot key.** For a trusted EK, the server answers with a per-boot key wrapped by
  TPM2 MakeCredential to that EK and this boot's AK (tpm.py): only that TPM recovers it.
  The key is derived from the secrets key and the boot's credential, so every server of a
  cluster derives the same one and the database does not hold it.
- **The overlay.** A node with an enrolled TPM gets its overlay only encrypted under the
  boot key (`seal`): whoever fetches it without that TPM holds ciphertext. A pending TPM
  gets no overlay at all. A node with no TPM enrolled keeps the access rule alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import tpm
from .inventory.records import TpmRecord

MAGIC = b"RBTPM1\0\0"  # an overlay sealed to a boot key: MAGIC, IV (16), AES-256-CTR text, HMAC-SHA256 (32)
KEY_BYTES = 32


class TpmStore(Protocol):
    """The store's tpms table (`inventory/tpms.py`)."""

    def get(self, node: str) -> TpmRecord | None: ...

    def enrol(self, rec: TpmRecord) -> TpmRecord: ...

    def refused(self, node: str, fingerprint: str, public: str, now: float) -> None: ...


@dataclass(frozen=True)
class Attestation:
    """The answer to a node's TPM report: the wrapped boot key, or why not."""

    status: Literal[200, 400, 403]
    why: str
    blob: bytes | None = None  # tpm2-tools' credential file, for tpm2_activatecredential
    event: str | None = None  # what to record in the node's timeline: tpm-enrolled, tpm-pending, untrusted-tpm
    fingerprint: str | None = None


@dataclass(frozen=True)
class OverlayKey:
    """How a node's overlay goes out: plain (no TPM enrolled), sealed to `key`, or not at all."""

    mode: Literal["plain", "sealed", "refused"]
    why: str
    key: bytes = b""


def boot_key(derive: Callable[[bytes], bytes], token_sha256: str) -> bytes:
    """This boot's key: bound to its credential, derived from the secrets key."""
    return derive(b"tpm boot key\0" + token_sha256.encode())


def _subkeys(key: bytes) -> tuple[bytes, bytes]:
    return (hmac.new(key, b"ramboot-overlay-enc", hashlib.sha256).digest(),
            hmac.new(key, b"ramboot-overlay-mac", hashlib.sha256).digest())


def seal(key: bytes, data: bytes) -> bytes:
    """`data` under `key`: AES-256-CTR then HMAC-SHA256 over all before it (encrypt-then-MAC),
    what `openssl enc` and `openssl dgst -mac HMAC` undo in the initramfs. The IV is an HMAC of
    the data, so the archive and its sha256 (two requests) seal alike, and no two different
    archives under one key share an IV."""
    enc_key, mac_key = _subkeys(key)
    iv = hmac.new(mac_key, b"iv\0" + data, hashlib.sha256).digest()[:16]
    enc = Cipher(algorithms.AES(enc_key), modes.CTR(iv)).encryptor()
    body = MAGIC + iv + enc.update(data) + enc.finalize()
    return body + hmac.new(mac_key, body, hashlib.sha256).digest()


def unseal(key: bytes, sealed: bytes) -> bytes:
    """`seal` undone (the tests' reference for what the initramfs does); ValueError if it does not open."""
    enc_key, mac_key = _subkeys(key)
    body, tag = sealed[:-32], sealed[-32:]
    if not body.startswith(MAGIC) or not hmac.compare_digest(tag, hmac.new(mac_key, body, hashlib.sha256).digest()):
        raise ValueError("not sealed to this key")
    dec = Cipher(algorithms.AES(enc_key), modes.CTR(body[8:24])).decryptor()
    return dec.update(body[24:]) + dec.finalize()


class TpmGate:
    def __init__(self, enroll: str, tpms: TpmStore, derive: Callable[[bytes], bytes],
                 clock: Callable[[], float] = time.time):
        self.enroll = enroll
        self.tpms = tpms
        self.derive = derive
        self.clock = clock

    def attest(self, node: str, token_sha256: str, ek_raw: bytes, ak_raw: bytes,
               ek_cert: bytes | None) -> Attestation:
        """A node's TPM report, for the boot whose credential the access rule accepted."""
        try:
            ek, ak = tpm.parse_public(ek_raw), tpm.parse_public(ak_raw)
            tpm.check_ek(ek)
            tpm.check_ak(ak)
        except tpm.TpmError as e:
            return Attestation(400, str(e))
        cert_text = None
        if ek_cert:
            try:
                cert = tpm.parse_ek_cert(ek_cert, ek)
                cert_text = f"issuer {cert.issuer}, until {cert.not_after}"
            except tpm.EkCertMismatch as e:
                return Attestation(400, str(e))
            except tpm.TpmError as e:  # a vendor's odd encoding: the EK itself is what is enrolled
                cert_text = f"unreadable ({e})"[:500]
        now = self.clock()
        public = base64.b64encode(ek_raw).decode()
        state = "trusted" if self.enroll == "first-boot" else "pending"
        new = TpmRecord(node, ek.fingerprint, public, cert_text, state, now, now if state == "trusted" else None)
        kept = self.tpms.enrol(new)
        fp = ek.fingerprint
        if not hmac.compare_digest(kept.ek_fingerprint, fp):
            self.tpms.refused(node, fp, public, now)
            return Attestation(403, f"untrusted TPM: its EK {fp} is not the one {node} enrolled "
                                    f"({kept.ek_fingerprint}); nothing secret is released", event="untrusted-tpm",
                               fingerprint=fp)
        if kept.state != "trusted":
            return Attestation(403, f"TPM pending: its EK {fp} waits for `ramboot node trust {node}`",
                               event="tpm-pending", fingerprint=fp)
        blob = tpm.make_credential(ek, ak.name, boot_key(self.derive, token_sha256))
        return Attestation(200, "boot key wrapped to the enrolled EK", blob,
                           event="tpm-enrolled" if kept is new else "tpm-attested", fingerprint=fp)

    def overlay_key(self, node: str, token_sha256: str) -> OverlayKey:
        """How this boot's overlay may go out."""
        rec = self.tpms.get(node)
        if rec is None:
            return OverlayKey("plain", "no TPM enrolled: the access rule alone")
        if rec.state != "trusted":
            return OverlayKey("refused", f"its TPM is pending: `ramboot node trust {node}` first")
        return OverlayKey("sealed", "sealed to the boot key its TPM recovers", boot_key(self.derive, token_sha256))
