"""TPM 2.0 on the server side, pure: read a TPM's public areas, check an attestation key,
and MakeCredential, so that only the TPM holding an endorsement key can recover a secret.

MakeCredential needs no TPM (TPM 2.0 Part 1 §24, "Credential Protection"; Part 3 §12.6):

- a seed, encrypted to the EK: RSA-OAEP with the EK's name algorithm and the label
  "IDENTITY\\0", or for an ECC EK an ephemeral ECDH whose shared x goes through KDFe;
- from the seed, KDFa (SP 800-108 HMAC counter mode) gives an AES key ("STORAGE", bound to
  the AK's name) and an HMAC key ("INTEGRITY");
- the secret, as a TPM2B, AES-CFB encrypted (zero IV) with the AES key, and an HMAC over
  that ciphertext and the AK's name.

The TPM's ActivateCredential undoes it only with the EK's private key and only if the AK
named is loaded in the same TPM. The bytes are what `tpm2_activatecredential -i` reads
(tpm2-tools' file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET); tests run
them through a real TPM (swtpm) to prove it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.modes import CFB  # TPM2's own choice for credentials
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

ALG_RSA, ALG_ECC = 0x0001, 0x0023
ALG_AES, ALG_CFB, ALG_NULL = 0x0006, 0x0043, 0x0010
_HASHES: dict[int, tuple[str, type[hashes.HashAlgorithm]]] = {
    0x000B: ("sha256", hashes.SHA256), 0x000C: ("sha384", hashes.SHA384), 0x000D: ("sha512", hashes.SHA512)}
_CURVES: dict[int, ec.EllipticCurve] = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1()}
# TPMA_OBJECT bits
FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN = 0x2, 0x10, 0x20
RESTRICTED, DECRYPT, SIGN = 0x10000, 0x20000, 0x40000
CRED_MAGIC, CRED_VERSION = 0xBADCC0DE, 1
MAX_PUBLIC = 1024  # a TPM2B_PUBLIC is well under this; anything bigger is not one
EK_CERT_NV = {ALG_RSA: 0x01C00002, ALG_ECC: 0x01C0000A}  # TCG EK credential profile: the low-range EK certs


class TpmError(ValueError):
    """A public area, key or certificate that is not what it must be: one line."""


class EkCertMismatch(TpmError):
    """An EK certificate for another key than the EK beside it: never a mistake worth trusting."""


@dataclass(frozen=True)
class TpmPublic:
    """A TPMT_PUBLIC: what MakeCredential and the checks need of it, and its bytes."""

    type: int
    name_alg: int
    attributes: int
    sym_bits: int  # the AES key size of a storage key's symmetric definition; 0 for none
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    raw: bytes  # the TPMT_PUBLIC as marshalled (the name is its hash)

    @property
    def name(self) -> bytes:
        """TPM2 name: the name algorithm, then the hash of the public area under it."""
        return struct.pack(">H", self.name_alg) + hashlib.new(_hash(self.name_alg)[0], self.raw).digest()

    @property
    def fingerprint(self) -> str:
        """What the operator compares: sha256 of the key's SubjectPublicKeyInfo (DER), as
        `openssl pkey -pubin -outform der | sha256sum` prints it from `tpm2_readpublic -f pem`."""
        der = self.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256:" + hashlib.sha256(der).hexdigest()


def _hash(alg: int) -> tuple[str, type[hashes.HashAlgorithm]]:
    try:
        return _HASHES[alg]
    except KeyError:
        raise TpmError(f"public area: hash algorithm 0x{alg:04x} is not supported (sha256, sha384, sha512)") from None


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TpmError("public area: truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def tpm2b(self) -> bytes:
        return self.take(self.u16())


def parse_public(data: bytes) -> TpmPublic:
    """A TPM2B_PUBLIC (what `tpm2_createek -u`/`tpm2_createak -u` write), or a bare TPMT_PUBLIC."""
    if len(data) > MAX_PUBLIC or len(data) < 4:
        raise TpmError(f"public area: {len(data)} bytes is not a TPM public area")
    size = struct.unpack(">H", data[:2])[0]
    if size == len(data) - 2:
        data = data[2:]
    r = _Reader(data)
    typ, name_alg, attrs = r.u16(), r.u16(), r.u32()
    _hash(name_alg)
    r.tpm2b()  # authPolicy
    sym_bits = 0
    sym = r.u16()
    if sym != ALG_NULL:
        sym_bits, mode = r.u16(), r.u16()
        if sym != ALG_AES or mode != ALG_CFB:
            raise TpmError("public area: a storage key's symmetric algorithm must be AES-CFB")
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if typ == ALG_RSA:
        if r.u16() != ALG_NULL:
            r.u16()  # the scheme's hash
        bits, exponent = r.u16(), r.u32() or 65537
        modulus = r.tpm2b()
        if bits not in (2048, 3072, 4096) or len(modulus) * 8 != bits:
            raise TpmError(f"public area: an RSA key of {len(modulus) * 8} bits (2048, 3072 or 4096 expected)")
        key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    elif typ == ALG_ECC:
        if r.u16() != ALG_NULL:
            r.u16()
        curve_id = r.u16()
        if r.u16() != ALG_NULL:
            r.u16()  # the KDF's hash
        curve = _CURVES.get(curve_id)
        if curve is None:
            raise TpmError(f"public area: curve 0x{curve_id:04x} is not supported (NIST P-256, P-384)")
        x, y = r.tpm2b(), r.tpm2b()
        try:
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve).public_key()
        except ValueError:
            raise TpmError("public area: the ECC point is not on its curve") from None
    else:
        raise TpmError(f"public area: key type 0x{typ:04x} is neither RSA nor ECC")
    if r.pos != len(data):
        raise TpmError("public area: trailing bytes")
    return TpmPublic(typ, name_alg, attrs, sym_bits, key, data)


def check_ek(ek: TpmPublic) -> None:
    """An endorsement key: a restricted decryption key that never leaves its TPM."""
    want = FIXED_TPM | FIXED_PARENT | RESTRICTED | DECRYPT
    if ek.attributes & want != want or ek.attributes & SIGN or ek.sym_bits not in (128, 256):
        raise TpmError("not an endorsement key: it must be a fixed, restricted decryption key with AES-CFB")


def check_ak(ak: TpmPublic) -> None:
    """An attestation key: a restricted signing key made inside its TPM, that never leaves it
    (so a credential activated for it proves it lives beside the EK)."""
    want = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN
    if ak.attributes & want != want or ak.attributes & DECRYPT:
        raise TpmError("not an attestation key: it must be a restricted signing key fixed to its TPM")


def kdfa(alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (TPM 2.0 Part 1 §11.4.10.2): SP 800-108 counter mode with HMAC; the label's
    terminating zero is part of it."""
    name = _hash(alg)[0]
    out = b""
    i = 0
    while len(out) * 8 < bits:
        i += 1
        out += hmac.new(key, struct.pack(">I", i) + label + b"\0" + context_u + context_v + struct.pack(">I", bits),
                        name).digest()
    return out[:bits // 8]


def kdfe(alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (TPM 2.0 Part 1 §11.4.10.3): SP 800-56A's single-step KDF with the hash."""
    name = _hash(alg)[0]
    out = b""
    i = 0
    while len(out) * 8 < bits:
        i += 1
        out += hashlib.new(name, struct.pack(">I", i) + z + label + b"\0" + party_u + party_v).digest()
    return out[:bits // 8]


def _seed(ek: TpmPublic, random: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """(seed, the seed as the EK's TPM recovers it: TPM2B_ENCRYPTED_SECRET's contents)."""
    name, algo = _hash(ek.name_alg)
    size = hashlib.new(name).digest_size
    if isinstance(ek.key, rsa.RSAPublicKey):
        seed = random(size)
        return seed, ek.key.encrypt(seed, padding.OAEP(padding.MGF1(algo()), algo(), b"IDENTITY\0"))
    eph = ec.generate_private_key(ek.key.curve)
    z = eph.exchange(ec.ECDH(), ek.key)
    n = (ek.key.curve.key_size + 7) // 8
    pub = eph.public_key().public_numbers()
    ex, ey = pub.x.to_bytes(n, "big"), pub.y.to_bytes(n, "big")
    kx = ek.key.public_numbers().x.to_bytes(n, "big")
    seed = kdfe(ek.name_alg, z, b"IDENTITY", ex, kx, size * 8)
    return seed, struct.pack(">H", n) + ex + struct.pack(">H", n) + ey


def make_credential(ek: TpmPublic, ak_name: bytes, secret: bytes,
                    random: Callable[[int], bytes] = os.urandom) -> bytes:
    """`secret` wrapped so that only the TPM holding `ek`, with the key named `ak_name`
    loaded, recovers it (TPM2_ActivateCredential): tpm2-tools' credential file."""
    name, _ = _hash(ek.name_alg)
    digest = hashlib.new(name).digest_size
    if not 0 < len(secret) <= digest:
        raise TpmError(f"a credential is 1 to {digest} bytes")
    seed, enc_secret = _seed(ek, random)
    sym = kdfa(ek.name_alg, seed, b"STORAGE", ak_name, b"", ek.sym_bits)
    enc = Cipher(algorithms.AES(sym), CFB(b"\0" * 16)).encryptor()
    enc_identity = enc.update(struct.pack(">H", len(secret)) + secret) + enc.finalize()
    hmac_key = kdfa(ek.name_alg, seed, b"INTEGRITY", b"", b"", digest * 8)
    outer = hmac.new(hmac_key, enc_identity + ak_name, name).digest()
    id_object = struct.pack(">H", len(outer)) + outer + enc_identity
    return (struct.pack(">II", CRED_MAGIC, CRED_VERSION) + struct.pack(">H", len(id_object)) + id_object
            + struct.pack(">H", len(enc_secret)) + enc_secret)


@dataclass(frozen=True)
class EkCert:
    subject: str
    issuer: str
    not_after: str


def parse_ek_cert(data: bytes, ek: TpmPublic) -> EkCert:
    """The EK certificate read from the TPM's NV (DER, perhaps padded), checked to hold `ek`'s
    key. Its chain to the manufacturer's CA is not checked here (docs/security.md)."""
    if len(data) < 4 or data[0] != 0x30:
        raise TpmError("EK certificate: not DER")
    if data[1] & 0x80:
        n = data[1] & 0x7F
        length = 2 + n + int.from_bytes(data[2:2 + n], "big")
    else:
        length = 2 + data[1]
    try:
        cert = x509.load_der_x509_certificate(data[:length])
        key = cert.public_key()
    except ValueError as e:
        raise TpmError(f"EK certificate: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_bytes(serialization.Encoding.DER, spki) != ek.key.public_bytes(serialization.Encoding.DER, spki):
        raise EkCertMismatch("EK certificate: it certifies another key than this EK")
    return EkCert(cert.subject.rfc4514_string()[:200], cert.issuer.rfc4514_string()[:200],
                  cert.not_valid_after_utc.isoformat())


# -- signatures and quotes by an attestation key --------------------------------------------
ALG_RSASSA, ALG_ECDSA = 0x0014, 0x0018
TPM_GENERATED, ST_ATTEST_QUOTE = 0xFF544347, 0x8018
MAX_SIGNATURE = 1024


def verify_signature(ak: TpmPublic, message: bytes, sig: bytes) -> None:
    """A TPMT_SIGNATURE (what `tpm2_sign -o` and `tpm2_quote -s` write) by `ak` over
    `message`, hashed as the signature says (sha256 or better); TpmError if it is not."""
    if len(sig) > MAX_SIGNATURE:
        raise TpmError("signature: too long")
    r = _Reader(sig)
    try:
        alg, hash_alg = r.u16(), r.u16()
        name, algo = _hash(hash_alg)
        if alg == ALG_ECDSA and isinstance(ak.key, ec.EllipticCurvePublicKey):
            rr, ss = int.from_bytes(r.tpm2b(), "big"), int.from_bytes(r.tpm2b(), "big")
            der = encode_dss_signature(rr, ss)
            if r.pos != len(sig):
                raise TpmError("signature: trailing bytes")
            ak.key.verify(der, message, ec.ECDSA(algo()))
        elif alg == ALG_RSASSA and isinstance(ak.key, rsa.RSAPublicKey):
            raw = r.tpm2b()
            if r.pos != len(sig):
                raise TpmError("signature: trailing bytes")
            ak.key.verify(raw, message, padding.PKCS1v15(), algo())
        else:
            raise TpmError(f"signature: scheme 0x{alg:04x} is not the attestation key's (ECDSA or RSASSA)")
    except InvalidSignature:
        raise TpmError(f"signature: not made by this attestation key over this message ({name})") from None


@dataclass(frozen=True)
class Quote:
    """A TPMS_ATTEST of type quote: the caller's nonce and the digest of the PCRs it selected."""

    nonce: bytes
    selection: tuple[tuple[int, tuple[int, ...]], ...]  # (hash algorithm, PCR indices ascending)
    pcr_digest: bytes


def parse_quote(data: bytes) -> Quote:
    """`tpm2_quote -m`: a TPM2B_ATTEST or a bare TPMS_ATTEST, made by the TPM (its magic)."""
    if len(data) > MAX_PUBLIC or len(data) < 8:
        raise TpmError(f"quote: {len(data)} bytes is not a TPM attestation")
    if struct.unpack(">H", data[:2])[0] == len(data) - 2:
        data = data[2:]
    r = _Reader(data)
    if r.u32() != TPM_GENERATED or r.u16() != ST_ATTEST_QUOTE:
        raise TpmError("quote: not a quote made by a TPM (magic, type)")
    r.tpm2b()  # qualifiedSigner
    nonce = r.tpm2b()
    r.take(17 + 8)  # clockInfo, firmwareVersion
    selection = []
    for _ in range(r.u32()):
        alg, size = r.u16(), r.take(1)[0]
        bits = r.take(size)
        selection.append((alg, tuple(i for i in range(size * 8) if bits[i // 8] >> (i % 8) & 1)))
    digest = r.tpm2b()
    if r.pos != len(data):
        raise TpmError("quote: trailing bytes")
    return Quote(nonce, tuple(selection), digest)


def verify_quote(ak: TpmPublic, attest: bytes, sig: bytes, nonce: bytes, pcr_bank: int,
                 values: dict[int, bytes]) -> None:
    """`attest` signed by `ak`, over `nonce`, and quoting exactly the PCRs `values` holds
    (one bank, `pcr_bank`): the values are then what the TPM held. TpmError if not."""
    verify_signature(ak, attest, sig)
    q = parse_quote(attest)
    if not hmac.compare_digest(q.nonce, nonce):
        raise TpmError("quote: over another nonce (a replayed quote, or one for another boot)")
    if q.selection != ((pcr_bank, tuple(sorted(values))),):
        raise TpmError("quote: it selects other PCRs than the values sent")
    name = _hash(pcr_bank)[0]
    joined = b"".join(values[i] for i in sorted(values))
    if not hmac.compare_digest(hashlib.new(name, joined).digest(), q.pcr_digest):
        raise TpmError("quote: the PCR values sent are not the ones the TPM quoted")


# -- the firmware's event log ---------------------------------------------------------------
EV_NO_ACTION = 0x3
MAX_EVENT_LOG = 1 << 20


@dataclass(frozen=True)
class Event:
    pcr: int
    type: int
    sha256: bytes
    data: bytes


def parse_event_log(data: bytes) -> list[Event]:
    """The TCG PC Client crypto-agile event log (`binary_bios_measurements`): its events with a
    sha256 digest. Only the PCR values the TPM quoted make it true; `replay` checks that."""
    if len(data) > MAX_EVENT_LOG:
        raise TpmError("event log: too long")
    if not data:
        return []

    def u32(at: int) -> int:
        if at + 4 > len(data):
            raise TpmError("event log: truncated")
        return int(struct.unpack_from("<I", data, at)[0])

    # The first event, in the old SHA-1 format, is the Spec ID event naming the digest sizes.
    size = u32(28)
    spec = data[32:32 + size]
    if not spec.startswith(b"Spec ID Event03\0") or len(spec) < 28:
        raise TpmError("event log: not a crypto-agile (TCG2) log")
    sizes = {}
    for n in range(struct.unpack_from("<I", spec, 24)[0]):
        if 28 + 4 * n + 4 > len(spec):
            raise TpmError("event log: truncated")
        alg, dsize = struct.unpack_from("<HH", spec, 28 + 4 * n)
        sizes[alg] = dsize
    at, out = 32 + size, []
    while at < len(data):
        pcr, typ, count = u32(at), u32(at + 4), u32(at + 8)
        at += 12
        digest = b""
        for _ in range(count):
            if at + 2 > len(data):
                raise TpmError("event log: truncated")
            alg = struct.unpack_from("<H", data, at)[0]
            if alg not in sizes:
                raise TpmError(f"event log: digest algorithm 0x{alg:04x} not in its header")
            if alg == 0x000B:
                digest = data[at + 2:at + 2 + sizes[alg]]
            at += 2 + sizes[alg]
        n = u32(at)
        body = data[at + 4:at + 4 + n]
        if len(body) != n:
            raise TpmError("event log: truncated")
        at += 4 + n
        if typ != EV_NO_ACTION:
            if len(digest) != 32:
                raise TpmError("event log: an event without a sha256 digest")
            out.append(Event(pcr, typ, digest, body))
    return out


def replay(events: list[Event], pcr: int) -> bytes:
    """The sha256 PCR value `events` extend `pcr` to, from zero."""
    value = bytes(32)
    for e in events:
        if e.pcr == pcr:
            value = hashlib.sha256(value + e.sha256).digest()
    return value
