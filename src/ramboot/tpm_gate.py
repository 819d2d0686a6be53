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
- **Reports.** Once a boot's AK got its credential, a trusted node's stage and inventory
  reports must be signed by that AK (`check_report`) over the boot's report nonce, a
  counter and the body's sha256. The nonce is an HMAC of the boot key: only the TPM that
  ran ActivateCredential knows it, and a new boot has another one. The counter must grow,
  so a report is taken once.
- **Measured boot** (`[security] tpm_measured`). The TPM report carries a quote of PCRS by
  the AK, over a nonce of this boot's credential; the first values seen for a node and
  image are kept, and a later boot whose values differ gets no key, the PCR named. The
  command line is judged in PCR 8 (GRUB's text), 9 (Linux's EFI stub under iPXE, a digest
  the server checks against the command line it served this boot) or 12 (systemd-stub's
  text, a UKI under iPXE); a UKI's kernel and initrd are in 4 and 11, by value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import tpm
from .inventory.records import TpmRecord

# sha256 bank: firmware and its settings (0-7), boot loader's cmdline and files (8, 9), a UKI's
# sections (11) and the command line systemd-stub was given (12). Not 10: IMA's boot aggregate
# hashes PCRs 0-9, this boot's credential among them, so it differs at every boot.
PCRS = (*range(10), 11, 12)
PCR_BANK = 0x000B  # sha256
LOGGED = (8, 9, 12)  # judged by their events: GRUB's commands and files, Linux's EFI stub's, systemd-stub's
EV_IPL = 0xD
NOT_SERVED = "not the command line served this boot"
EV_EVENT_TAG = 0x6  # a tagged event: a u32 tag, a u32 size, that many bytes (a description, not the data)
TAG_LOAD_OPTIONS = 0x8F3B22ED  # Linux's EFI stub: its LoadOptions (the command line) into PCR 9
SIGNATURE_HEADER = "X-Ramboot-Signature"  # SEQ:base64 TPMT_SIGNATURE, on a node's reports
MAGIC = b"RBTPM1\0\0"  # an overlay sealed to a boot key: MAGIC, IV (16), AES-256-CTR text, HMAC-SHA256 (32)
KEY_BYTES = 32


class TpmStore(Protocol):
    """The store's tpms table (`inventory/tpms.py`)."""

    def get(self, node: str) -> TpmRecord | None: ...

    def enrol(self, rec: TpmRecord) -> TpmRecord: ...

    def refused(self, node: str, fingerprint: str, public: str, now: float) -> None: ...

    def bind_boot(self, node: str, boot: str, ak_public: str) -> None: ...

    def advance(self, node: str, boot: str, seq: int) -> bool: ...

    def keep_pcrs(self, node: str, image: str, values: dict[str, str]) -> dict[str, str]: ...

    def pcr_refused(self, node: str, why: str, now: float) -> None: ...


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


def report_nonce(key: bytes) -> str:
    """The nonce a boot's reports are signed over: only the TPM that recovered `key` knows it."""
    return hmac.new(key, b"ramboot-report-nonce", hashlib.sha256).hexdigest()


def report_message(kind: str, mac: str, nonce: str, seq: int, body: bytes) -> bytes:
    """What the AK signs for one report (tpm.sh's rb_tpm_sign writes the same)."""
    return f"ramboot-report {kind} {mac} {nonce} {seq} {hashlib.sha256(body).hexdigest()}".encode()


def quote_nonce(token_sha256: str) -> bytes:
    """A quote's qualifying data: of this boot's credential, so a quote of another boot fails."""
    return hashlib.sha256(b"ramboot-quote " + token_sha256.encode()).digest()


@dataclass(frozen=True)
class Measured:
    """A boot's quote as the node sent it (TpmReport's quote, quote_sig, pcrs, eventlog)."""

    attest: bytes
    signature: bytes
    values: bytes  # the PCRS' values, concatenated
    eventlog: bytes = b""  # the firmware's TCG event log, for the PCRs judged by their events


_TOKEN = re.compile(rb"ramboot\.token=(\S+)")


def load_options_digest(cmdline: str) -> bytes:
    """What Linux's EFI stub measures of a command line iPXE passed it: iPXE widens each byte
    to a UCS-2 character and counts the NUL in LoadOptionsSize; the stub hashes all of it."""
    return hashlib.sha256(cmdline.encode().decode("latin-1").encode("utf-16-le") + b"\0\0").digest()


def _tagged(data: bytes) -> tuple[int, bytes] | None:
    """A tagged event's tag and description (TCG_PCClientTaggedEvent), None if not one."""
    if len(data) < 8:
        return None
    tag, size = struct.unpack_from("<II", data)
    return (tag, data[8:8 + size].rstrip(b"\0")) if 8 + size <= len(data) else None


def _this_boot(token_sha256: str) -> Callable[[re.Match[bytes]], bytes]:
    def sub(m: re.Match[bytes]) -> bytes:
        mine = hmac.compare_digest(hashlib.sha256(m.group(1)).hexdigest(), token_sha256)
        return b"ramboot.token=(this boot's)" if mine else m.group(0)
    return sub


def _stub_event(e: tpm.Event, token_sha256: str) -> bytes:
    """A systemd-stub event in PCR 12: the command line it was given is measured as its own
    UTF-16 text, which is the event's data; anything else (a credentials archive) shows as
    its description and digest."""
    measured_text = hmac.compare_digest(hashlib.sha256(e.data).digest(), e.sha256)
    if e.type == EV_IPL and len(e.data) % 2 == 0 and measured_text:
        try:
            text = e.data.decode("utf-16-le").rstrip("\0").encode()
        except UnicodeDecodeError:
            text = b""
        if text:
            return b"LoadOptions: " + _TOKEN.sub(_this_boot(token_sha256), text)
    description = e.data.decode("utf-16-le", "replace") if e.type == EV_IPL else e.data.decode("latin-1")
    return description.rstrip("\0").encode("utf-8", "replace") + b" " + e.sha256.hex().encode()


def measurements(values: dict[int, bytes], events: list[tpm.Event], token_sha256: str,
                 load_options: Sequence[str] = ()) -> dict[str, str]:
    """What is compared from boot to boot. PCRs 0-7 (firmware, its settings, the loaders) and
    11 (a UKI's sections, as systemd-stub measures them) by value. PCRs 8, 9 and 12 by their
    events, which must replay to the quoted values: GRUB measures each command it runs (the
    kernel command line among them) into 8 as text, and each file it loads into 9. This boot's
    credential is on the command line and in grub.cfg, so its value in 8 is taken as "this
    boot's" when it is this boot's (else it stays and differs), and the config files in 9
    count by name only: what of them ran is in 8.
    Linux's EFI stub (iPXE under UEFI) measures its command line into 9 as a tagged event that
    carries a digest only: it counts as the one of `load_options` (the command lines this
    server would have served this boot, its credential made "this boot's") whose digest it is,
    else as its digest, which differs. Other tagged events (the initrd) count by digest.
    systemd-stub (a UKI) measures the command line it was given into 12 as its text, the
    credential made "this boot's" as in 8."""
    out = {str(i): v.hex() for i, v in values.items() if i not in LOGGED}
    for i in LOGGED:
        if i not in values:
            continue
        if not hmac.compare_digest(tpm.replay(events, i), values[i]):
            raise tpm.TpmError(f"the event log does not replay to the quoted PCR {i}")
        lines = []
        for e in (e for e in events if e.pcr == i):
            text = e.data.rstrip(b"\0")
            tagged = _tagged(e.data) if e.type == EV_EVENT_TAG else None
            if tagged is not None and tagged[0] == TAG_LOAD_OPTIONS:
                served = [c for c in load_options if hmac.compare_digest(load_options_digest(c), e.sha256)]
                if served:
                    line = b"LoadOptions: " + _TOKEN.sub(_this_boot(token_sha256), served[0].encode())
                else:
                    line = b"LoadOptions " + e.sha256.hex().encode() + f" ({NOT_SERVED})".encode()
            elif tagged is not None:
                line = tagged[1] + b" " + e.sha256.hex().encode()
            elif i == 12:
                line = _stub_event(e, token_sha256)
            elif i == 8:
                if not hmac.compare_digest(hashlib.sha256(text).digest(), e.sha256):
                    raise tpm.TpmError("PCR 8: an event's text is not what was measured")
                line = _TOKEN.sub(_this_boot(token_sha256), text)
            elif text.endswith(b".cfg"):
                line = text + b" (config: its commands are in PCR 8)"
            else:
                line = text + b" " + e.sha256.hex().encode()
            lines.append(line.decode("utf-8", "replace").replace("\n", " "))
        out[f"{i}:log"] = "\n".join(lines)
        out[str(i)] = hashlib.sha256(out[f"{i}:log"].encode()).hexdigest()
    return out


def _what_changed(line: str, kept: list[str]) -> str:
    """A new event of a PCR, for the operator: whole if short; else its label and the words
    it has (+) and lacks (-) against the kept events of that label (a long command line)."""
    if len(line) <= 120:
        return line
    label = line.split(" ", 1)[0]
    words = set(line.split())
    old = {w for k in kept if k.split(" ", 1)[0] == label for w in k.split()}
    diff = [f"+{w}" for w in line.split() if w not in old] + [f"-{w}" for w in sorted(old - words)]
    return f"{label} ... {' '.join(diff)}"[:160]


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
                 clock: Callable[[], float] = time.time, measured: bool = False):
        self.enroll = enroll
        self.measured = measured
        self.tpms = tpms
        self.derive = derive
        self.clock = clock

    def attest(self, node: str, token_sha256: str, ek_raw: bytes, ak_raw: bytes,
               ek_cert: bytes | None, quote: Measured | None = None, image: str = "",
               load_options: Sequence[str] = ()) -> Attestation:
        """A node's TPM report, for the boot whose credential the access rule accepted.
        `load_options`: the command lines served this boot, as an EFI kernel gets them from iPXE."""
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
        if self.measured:
            refused = self._pcrs(node, image, token_sha256, ak, quote, load_options)
            if refused is not None:
                return refused
        blob = tpm.make_credential(ek, ak.name, boot_key(self.derive, token_sha256))
        self.tpms.bind_boot(node, token_sha256, base64.b64encode(ak_raw).decode())
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

    def _pcrs(self, node: str, image: str, token_sha256: str, ak: tpm.TpmPublic,
              quote: Measured | None, load_options: Sequence[str]) -> Attestation | None:
        """Measured boot: None if this boot quotes the node's trusted PCR values for `image`
        (the first seen are kept), else the refusal naming the PCRs that changed."""
        if quote is None:
            return Attestation(403, "measured boot: no PCR quote; this server releases keys only to a quoted boot",
                               event="untrusted-boot")
        size = 32
        if len(quote.values) != size * len(PCRS):
            return Attestation(400, f"measured boot: {len(PCRS)} sha256 PCR values expected")
        values = {i: quote.values[n * size:(n + 1) * size] for n, i in enumerate(PCRS)}
        try:
            tpm.verify_quote(ak, quote.attest, quote.signature, quote_nonce(token_sha256), PCR_BANK, values)
            now = measurements(values, tpm.parse_event_log(quote.eventlog), token_sha256, load_options)
        except tpm.TpmError as e:
            return Attestation(403, f"measured boot: {e}", event="untrusted-boot")
        kept = self.tpms.keep_pcrs(node, image, now)
        changed = [i for i in PCRS if not hmac.compare_digest(kept.get(str(i), ""), now[str(i)])]
        if changed:
            logs = {i: (now.get(f"{i}:log", "").splitlines(), kept.get(f"{i}:log", "").splitlines()) for i in changed}
            new = [_what_changed(line, was) for lines, was in logs.values() for line in lines if line not in was]
            new.sort(key=lambda line: NOT_SERVED in line)  # a command line's text (PCR 12) says more than its digest
            why = (f"PCR {', '.join(map(str, changed))} changed since the first trusted boot of image "
                   f"{image or '?'}{f' (new: {new[0]})' if new else ''}: no key released "
                   f"(`ramboot node trust {node}` takes the next boot's values)")
            self.tpms.pcr_refused(node, why, self.clock())
            return Attestation(403, f"measured boot: {why}", event="untrusted-boot")
        return None

    def check_report(self, node: str, kind: str, body: bytes, header: str | None) -> str | None:
        """A node's stage or inventory report: None if it may be taken, else why not (one line).
        A node with no trusted TPM, or whose TPM has not attested a boot yet, reports unsigned."""
        rec = self.tpms.get(node)
        if rec is None or rec.state != "trusted" or rec.ak_public is None or rec.boot is None:
            return None
        if not header:
            return f"{node} has a trusted TPM: its reports must be signed by its attestation key ({SIGNATURE_HEADER})"
        seq_text, _, sig_text = header.partition(":")
        try:
            seq = int(seq_text)
            sig = base64.b64decode(sig_text, validate=True)
            ak = tpm.parse_public(base64.b64decode(rec.ak_public))
        except (ValueError, tpm.TpmError):
            return f"{SIGNATURE_HEADER}: not SEQ:base64"
        if not 0 < seq < 2**31:
            return f"{SIGNATURE_HEADER}: counter out of range"
        nonce = report_nonce(boot_key(self.derive, rec.boot))
        try:
            tpm.verify_signature(ak, report_message(kind, node, nonce, seq, body), sig)
        except tpm.TpmError as e:
            return f"report not signed by this boot's attestation key of {node}: {e}"
        if not self.tpms.advance(node, rec.boot, seq):
            return f"report counter {seq} taken already: a replayed report"
        return None
