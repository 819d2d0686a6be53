"""A node's TPM speaks for it (tpm_gate.py): reports signed by this boot's attestation key,
and measured boot (a PCR quote before the boot key). Real TPMs (swtpm, tpm2-tools), a real
server on loopback, and the initramfs' own signing code (tpm.sh) run by sh."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import struct
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from conftest import write_fake_image
from httpserver import LiveServer
from ramboot import tpm, tpm_gate
from ramboot.inventory.records import NodeSpec
from ramboot.inventory.store import LeaseRecord
from ramboot.proto.dhcp_core import lease_key
from tpm_sim import Tpm, swtpm

MAC, OTHER = "52:54:00:21:00:02", "52:54:00:21:00:03"
NODE_IP = "127.0.0.2"
RAMBOOT = str(Path(sys.executable).with_name("ramboot"))
FULL = ('[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n[security]\noverlay_over_http = true\n'
        'tpm_enroll = "first-boot"\n')
TPM_SH = resources.files("ramboot.images") / "initramfs" / "tpm.sh"
PCRS = ",".join(map(str, tpm_gate.PCRS))


def _post(srv: LiveServer, path: str, token: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20, source_address=(NODE_IP, 0))
    h = {"Content-Type": "application/json", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _tpm_report(t: Tpm) -> dict[str, str]:
    """As the initramfs: an RSA EK and an ECDSA AK (tpm.sh)."""
    ek, ak = t.ek_ak("rsa", "ecc")
    return {"ek": base64.b64encode(ek).decode(), "ak": base64.b64encode(ak).decode()}


def _header(t: Tpm, kind: str, mac: str, nonce: str, seq: int, body: bytes) -> str:
    sig = t.sign(tpm_gate.report_message(kind, mac, nonce, seq, body))
    return f"{seq}:{base64.b64encode(sig).decode()}"


def _shell_sign(t: Tpm, kind: str, mac: str, body: str) -> str:
    """tpm.sh's rb_tpm_sign, as the initramfs runs it, on this swtpm."""
    env = {**t.env(), "RB_TPM_DIR": str(t.root), "RB_TCTI": f"swtpm:path={t.sock}"}
    p = subprocess.run(["sh", "-c", f'. "{TPM_SH}"; rb_tpm_sign "$@"', "sh", kind, mac, body], env=env,
                       capture_output=True, text=True)
    subprocess.run(["tpm2_flushcontext", "-t"], env=t.env(), capture_output=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.fixture
def served(data_dir: Path):
    write_fake_image(data_dir, "demo")
    (data_dir / "cfg.toml").write_text(f'data_dir = "{data_dir}"\n{FULL}')
    srv = LiveServer(data_dir, FULL)
    srv.store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1"))
    srv.store.leases.save([LeaseRecord(lease_key(None, MAC), NODE_IP, MAC, time.time() + 600, None, None, None)])
    yield srv
    srv.close()


def _untrusted_reports(srv: LiveServer) -> list[str]:
    srv.run(srv.events.flush)
    return [e.detail["why"] for e in srv.store.events.of(MAC) if e.stage == "untrusted-report"]


def test_reports_of_a_trusted_tpm_must_be_signed_by_this_boots_ak(served: LiveServer, tmp_path: Path) -> None:
    srv = served
    ev = f"/api/v1/nodes/{MAC}/events"
    body = json.dumps({"stage": "verified", "detail": {"sha256": "ab" * 32}}).encode()
    with swtpm(tmp_path / "a") as a, swtpm(tmp_path / "b") as b:
        token = srv.node_token(MAC, NODE_IP)
        # Before any TPM is enrolled: today's rules, unsigned.
        assert _post(srv, ev, token, body, {})[0] == 202
        st, blob = _post(srv, f"/api/v1/nodes/{MAC}/tpm", token, json.dumps(_tpm_report(a)).encode(), {})
        assert st == 200, blob
        key = a.activate(blob)
        assert key is not None
        nonce = tpm_gate.report_nonce(key)
        # The node's own code: tpm.sh signs with its AK over the nonce it derived from the key.
        (a.root / "nonce").write_text(nonce)
        (a.root / "seq").write_text("0\n")
        sig = _shell_sign(a, "events", MAC, body.decode())
        assert sig.startswith("1:")
        assert _post(srv, ev, token, body, {tpm_gate.SIGNATURE_HEADER: sig})[0] == 202
        inv = json.dumps({"cpu": {"model": "x", "count": 1}, "memory_kib": 1, "nics": [], "disks": []}).encode()
        sig = _shell_sign(a, "inventory", MAC, inv.decode())
        assert _post(srv, f"/api/v1/nodes/{MAC}/inventory", token, inv, {tpm_gate.SIGNATURE_HEADER: sig})[0] == 202

        b.ek_ak("rsa", "ecc")
        forged = {
            "unsigned": "",
            "replayed counter": _header(a, "events", MAC, nonce, 1, body),
            "wrong key": _header(b, "events", MAC, nonce, 5, body),
            "wrong nonce": _header(a, "events", MAC, tpm_gate.report_nonce(b"\0" * 32), 6, body),
            "other MAC": _header(a, "events", OTHER, nonce, 7, body),
            "other kind": _header(a, "inventory", MAC, nonce, 8, body),
            "other body": _header(a, "events", MAC, nonce, 9, body + b" "),
            "garbage": "10:AAAA",
        }
        for case, header in forged.items():
            st, why = _post(srv, ev, token, body, {tpm_gate.SIGNATURE_HEADER: header} if header else {})
            assert st == 403, (case, why)
            assert b"\n" not in why.strip()
        whys = _untrusted_reports(srv)
        assert len(whys) == len(forged), whys
        assert "must be signed" in whys[0] and "replayed" in whys[1] and "not signed by" in whys[2]
        # The same report, signed once more with a new counter: taken.
        assert _post(srv, ev, token, body, {tpm_gate.SIGNATURE_HEADER: _header(a, "events", MAC, nonce, 11, body)})[0] \
            == 202

        # A new boot: its AK and its nonce; the last boot's signature no longer speaks for the node.
        old = _header(a, "events", MAC, nonce, 12, body)
        token = srv.node_token(MAC, NODE_IP)
        st, blob = _post(srv, f"/api/v1/nodes/{MAC}/tpm", token, json.dumps(_tpm_report(a)).encode(), {})
        assert st == 200
        key2 = a.activate(blob)
        assert key2 is not None and key2 != key
        assert _post(srv, ev, token, body, {tpm_gate.SIGNATURE_HEADER: old})[0] == 403
        new = _header(a, "events", MAC, tpm_gate.report_nonce(key2), 1, body)
        assert _post(srv, ev, token, body, {tpm_gate.SIGNATURE_HEADER: new})[0] == 202
    show = subprocess.run([RAMBOOT, "node", "show", MAC, "--config", str(srv.config.data_dir / "cfg.toml")],
                          capture_output=True, text=True)
    assert "tpm reports: signed" in show.stdout, show.stdout + show.stderr


def test_verify_signature_refuses_what_the_ak_did_not_sign(tmp_path: Path) -> None:
    with swtpm(tmp_path / "a") as a:
        for alg in ("ecc", "rsa"):
            _, ak_raw = a.ek_ak("rsa", alg)
            ak = tpm.parse_public(ak_raw)
            sig = a.sign(b"hello")
            tpm.verify_signature(ak, b"hello", sig)
            with pytest.raises(tpm.TpmError, match="not made by this attestation key"):
                tpm.verify_signature(ak, b"hellO", sig)
            with pytest.raises(tpm.TpmError):
                tpm.verify_signature(ak, b"hello", sig[:-1])


def _measured(srv: LiveServer) -> tpm_gate.TpmGate:
    return tpm_gate.TpmGate("first-boot", srv.store.tpms, srv.store.secrets.derived_key, measured=True)


class Firmware:
    """A boot's measurements as OVMF and GRUB make them: into the swtpm, and into a TCG2
    crypto-agile event log (Spec ID header, then one sha256 event each)."""

    SPEC = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1) + struct.pack("<HH", 0x000B, 32) + b"\0"
    HEADER = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(SPEC)) + SPEC

    def __init__(self, t: Tpm):
        self.t = t
        t.reboot()
        self.log = self.HEADER

    def measure(self, pcr: int, data: bytes, digest: bytes | None = None, log_only: bool = False,
                typ: int = 0xD) -> None:
        """One event (EV_IPL unless `typ`): `data` as its text, NUL-terminated; measured `digest` (of `data`)."""
        self.event(pcr, typ, data + b"\0", digest or hashlib.sha256(data).digest(), log_only)

    def event(self, pcr: int, typ: int, body: bytes, digest: bytes, log_only: bool = False) -> None:
        if not log_only:
            self.t.run("tpm2_pcrextend", f"{pcr}:sha256={digest.hex()}")
        self.log += struct.pack("<III", pcr, typ, 1) + struct.pack("<H", 0x000B) + digest + \
            struct.pack("<I", len(body)) + body

    def efi_stub(self, load_options: str, initrd: bytes = b"the initrd", lie: str | None = None) -> None:
        """OVMF loads iPXE and the kernel (PCR 4); Linux's EFI stub measures the initrd and its
        LoadOptions (as iPXE passes them) into PCR 9 as tagged events: a tag, then a description.
        `lie`: the log shows that command line's digest, the TPM was extended with the other."""
        self.measure(4, b"snponly.efi")
        self.measure(4, b"vmlinuz")
        self.event(9, tpm_gate.EV_EVENT_TAG, struct.pack("<II", 0x8F3B22EC, 13) + b"Linux initrd\0",
                   hashlib.sha256(initrd).digest())
        tag = struct.pack("<II", tpm_gate.TAG_LOAD_OPTIONS, 26) + b"LOADED_IMAGE::LoadOptions\0"
        self.event(9, tpm_gate.EV_EVENT_TAG, tag, tpm_gate.load_options_digest(load_options), log_only=lie is not None)
        if lie is not None:
            self.t.run("tpm2_pcrextend", f"9:sha256={tpm_gate.load_options_digest(lie).hex()}")

    def uki(self, load_options: str, kernel: bytes = b"the kernel", initrd: bytes = b"the initrd",
            lie: str | None = None, text: str | None = None) -> None:
        """OVMF loads iPXE and the UKI (PCR 4, the UKI whole); systemd-stub measures its sections,
        each name then its bytes (PCR 11), and the command line iPXE gave it as UTF-16 text (PCR
        12, EV_IPL); the kernel it starts measures that command line and the initrd into PCR 9.
        `lie`: the TPM's PCR 12 was extended with that command line, the log shows the served one.
        `text`: the PCR 12 event shows that text with the served line's digest."""
        sections = ((".linux", kernel), (".osrel", b"ID=ramboot\n"), (".initrd", initrd))
        self.measure(4, b"snponly.efi")
        self.event(4, 0x80000003, b"the UKI's device path", hashlib.sha256(b"".join(d for _, d in sections)).digest())
        for name, data in sections:
            label = name.encode("utf-16-le") + b"\0\0"
            self.event(11, tpm_gate.EV_IPL, label, hashlib.sha256(name.encode() + b"\0").digest())
            self.event(11, tpm_gate.EV_IPL, label, hashlib.sha256(data).digest())
        wide = load_options.encode("utf-16-le") + b"\0\0"
        shown = text.encode("utf-16-le") + b"\0\0" if text is not None else wide
        self.event(12, tpm_gate.EV_IPL, shown, hashlib.sha256(wide).digest(), log_only=lie is not None)
        if lie is not None:
            measured = hashlib.sha256(lie.encode("utf-16-le") + b"\0\0").hexdigest()
            self.t.run("tpm2_pcrextend", f"12:sha256={measured}")
        tag = struct.pack("<II", tpm_gate.TAG_LOAD_OPTIONS, 26) + b"LOADED_IMAGE::LoadOptions\0"
        self.event(9, tpm_gate.EV_EVENT_TAG, tag, tpm_gate.load_options_digest(lie or load_options))
        self.event(9, tpm_gate.EV_EVENT_TAG, struct.pack("<II", 0x8F3B22EC, 13) + b"Linux initrd\0",
                   hashlib.sha256(initrd).digest())

    def grub(self, token: str, args: str = "") -> None:
        """GRUB: its config file, the kernel and initrd files (PCR 9), the commands and command line (PCR 8)."""
        self.measure(4, b"grubx64.efi")
        cmdline = f"console=ttyS0 ramboot.token={token}{args}"
        self.measure(9, b"(tftp)/grub/node.cfg", hashlib.sha256(f"linux /vmlinuz {cmdline}".encode()).digest())
        self.measure(8, f"grub_cmd: linux /vmlinuz {cmdline}".encode())
        self.measure(9, b"(tftp)/vmlinuz", hashlib.sha256(b"the kernel").digest())
        self.measure(8, f"kernel_cmdline: /vmlinuz {cmdline}".encode())


def _boot(t: Tpm, gate: tpm_gate.TpmGate, token: str, args: str = "", image: str = "demo",
          nonce: bytes | None = None, lie: bool = False) -> tpm_gate.Attestation:
    """One boot: GRUB measures, then the initramfs' TPM report with its quote (as tpm.sh)."""
    fw = Firmware(t)
    fw.grub(token, args)
    if lie:  # a log that says the usual command line while the TPM measured another
        fw.log = Firmware.HEADER
        fw.measure(8, b"grub_cmd: linux /vmlinuz console=ttyS0", log_only=True)
    sha = hashlib.sha256(token.encode()).hexdigest()
    ek, ak = t.ek_ak("rsa", "ecc")
    attest, sig, values = t.quote(PCRS, nonce if nonce is not None else tpm_gate.quote_nonce(sha))
    return gate.attest(MAC, sha, ek, ak, None, tpm_gate.Measured(attest, sig, values, fw.log), image)


def test_measured_boot_releases_the_key_only_to_the_first_trusted_pcrs(served: LiveServer, tmp_path: Path) -> None:
    srv = served
    gate = _measured(srv)
    tokens = iter(f"token-{i}-{os.urandom(8).hex()}" for i in range(100))
    with swtpm(tmp_path / "a") as a, swtpm(tmp_path / "b") as b:
        assert _boot(a, gate, next(tokens)).status == 200  # first boot: its PCRs are kept
        rec = srv.store.tpms.get(MAC)
        assert rec is not None and rec.pcrs is not None
        assert "kernel_cmdline: /vmlinuz console=ttyS0 ramboot.token=(this boot's)" in rec.pcrs["demo"]["8:log"]
        # The next boot, its own credential on the same command line: the key.
        first = _boot(a, gate, next(tokens))
        assert first.status == 200 and first.blob and a.activate(first.blob) is not None, first.why

        # Forged: a quote for another boot's nonce; a log that does not replay to the quote;
        # PCR values other than those quoted; another TPM's quote; none at all; another
        # boot's credential on the command line.
        assert "another nonce" in _boot(a, gate, next(tokens), nonce=tpm_gate.quote_nonce("f" * 64)).why
        assert "does not replay to the quoted PCR 8" in _boot(a, gate, next(tokens), lie=True).why
        token = next(tokens)
        sha = hashlib.sha256(token.encode()).hexdigest()
        fw = Firmware(a)
        fw.grub(token)
        ek, ak = a.ek_ak("rsa", "ecc")
        attest, sig, values = a.quote(PCRS, tpm_gate.quote_nonce(sha))
        forged = tpm_gate.Measured(attest, sig, values[:32 * 4] + bytes(32) + values[32 * 5:], fw.log)
        assert "not the ones the TPM quoted" in gate.attest(MAC, sha, ek, ak, None, forged, "demo").why
        _, b_ak = b.ek_ak("rsa", "ecc")
        b_quote = b.quote(PCRS, tpm_gate.quote_nonce(sha))
        assert gate.attest(MAC, sha, ek, b_ak, None, tpm_gate.Measured(*b_quote, fw.log), "demo").status == 403
        answer = gate.attest(MAC, sha, ek, ak, None, None, "demo")
        assert answer.status == 403 and "no PCR quote" in answer.why
        stale = _boot(a, gate, next(tokens), args=f" ramboot.token={token}")
        assert stale.status == 403 and "PCR 8 changed" in stale.why

        # One more kernel argument: refused, the PCR and the new command named.
        answer = _boot(a, gate, next(tokens), args=" init=/bin/sh")
        assert answer.status == 403 and answer.blob is None and answer.event == "untrusted-boot"
        assert "PCR 8 changed" in answer.why and "init=/bin/sh" in answer.why, answer.why
        # Another image is another set of trusted values.
        assert _boot(a, gate, next(tokens), args=" init=/bin/sh", image="other").status == 200
    show = subprocess.run([RAMBOOT, "node", "show", MAC, "--config", str(srv.config.data_dir / "cfg.toml")],
                          capture_output=True, text=True)
    assert "BOOT REFUSED" in show.stdout and "PCR 8 changed" in show.stdout, show.stdout + show.stderr
    # The operator trusts the new values on purpose: the next boot's are kept.
    assert srv.request("POST", f"/api/v1/nodes/{MAC}/tpm/trust", {})[0] == 200
    rec = srv.store.tpms.get(MAC)
    assert rec is not None and rec.pcrs is None and rec.pcr_refused is None


def _efi_boot(t: Tpm, gate: tpm_gate.TpmGate, token: str, served: str = "", booted: str | None = None,
              lie: str | None = None) -> tpm_gate.Attestation:
    """One boot through iPXE under UEFI: the server rendered `served` extra arguments, the
    kernel was handed `booted` ones (the same unless given), the stub measured them."""
    line = "vmlinuz initrd=ca.cpio initrd=initrd.img console=ttyS0 ramboot.server=http://172.22.33.2{} " \
        "ramboot.token=" + token
    fw = Firmware(t)
    fw.efi_stub(line.format(served if booted is None else booted), lie=lie and line.format(lie))
    return _attest(t, gate, token, fw, (line.format(served).replace("172.22.33.2", "10.0.0.1"), line.format(served)))


def _attest(t: Tpm, gate: tpm_gate.TpmGate, token: str, fw: Firmware, served: tuple[str, ...]) -> tpm_gate.Attestation:
    """The node's TPM report for this boot: its EK and AK, a quote over this boot's nonce and
    `fw`'s event log; `served`: the command lines the server rendered for it."""
    sha = hashlib.sha256(token.encode()).hexdigest()
    ek, ak = t.ek_ak("rsa", "ecc")
    attest, sig, values = t.quote(PCRS, tpm_gate.quote_nonce(sha))
    return gate.attest(MAC, sha, ek, ak, None, tpm_gate.Measured(attest, sig, values, fw.log), "demo", served)


def test_measured_efi_boot_knows_this_boots_command_line_by_its_digest(served: LiveServer, tmp_path: Path) -> None:
    """iPXE under UEFI: Linux's EFI stub measures the command line into PCR 9 as a digest alone.
    The one served this boot (its credential in it) counts as the same from boot to boot; an
    argument the server did not serve, a changed one, or a log that lies are refused, PCR 9 named."""
    gate = _measured(served)
    tokens = iter(f"token-{i}-{os.urandom(8).hex()}" for i in range(100))
    with swtpm(tmp_path / "a") as a:
        assert _efi_boot(a, gate, next(tokens)).status == 200
        rec = served.store.tpms.get(MAC)
        assert rec is not None and rec.pcrs is not None
        log = rec.pcrs["demo"]["9:log"]
        assert "LoadOptions: vmlinuz initrd=ca.cpio" in log and "ramboot.token=(this boot's)" in log, log
        assert f"Linux initrd {hashlib.sha256(b'the initrd').hexdigest()}" in log, log
        again = _efi_boot(a, gate, next(tokens))
        assert again.status == 200 and again.blob and a.activate(again.blob) is not None, again.why

        # An argument typed at iPXE's prompt (not served): its digest is no command line of this boot.
        typed = _efi_boot(a, gate, next(tokens), booted=" init=/bin/sh")
        assert typed.status == 403 and typed.event == "untrusted-boot" and "PCR 9 changed" in typed.why, typed.why
        assert "not the command line served" in typed.why, typed.why
        # Another boot's credential on the command line is not this boot's either.
        old = next(tokens)
        stale = _efi_boot(a, gate, next(tokens), booted=f" ramboot.token={old}")
        assert stale.status == 403 and "PCR 9 changed" in stale.why, stale.why
        # A log that shows the served command line while the TPM measured another.
        assert "does not replay to the quoted PCR 9" in _efi_boot(a, gate, next(tokens), lie=" init=/bin/sh").why
        # The operator's new kernel argument, served and booted: still not the trusted boot's.
        changed = _efi_boot(a, gate, next(tokens), served=" ramboot.extra=1")
        assert changed.status == 403 and "PCR 9 changed" in changed.why, changed.why
        assert "(new: LoadOptions: ... +ramboot.extra=1)" in changed.why, changed.why
        assert "PCR 4" not in changed.why and "PCR 8" not in changed.why, changed.why
        # Trusted again on purpose: that boot's values are kept, and the one after gets its key.
        assert served.request("POST", f"/api/v1/nodes/{MAC}/tpm/trust", {})[0] == 200
        assert _efi_boot(a, gate, next(tokens), served=" ramboot.extra=1").status == 200
        assert _efi_boot(a, gate, next(tokens), served=" ramboot.extra=1").status == 200


def _uki_boot(t: Tpm, gate: tpm_gate.TpmGate, token: str, served: str = "", booted: str | None = None,
              **measured: Any) -> tpm_gate.Attestation:
    """One boot of a UKI through iPXE under UEFI: the server rendered `served` extra arguments,
    the UKI was handed `booted` ones (the same unless given); `measured`: Firmware.uki's."""
    line = "ramboot-uki.efi console=ttyS0 ramboot.server=http://172.22.33.2{} ramboot.token=" + token
    fw = Firmware(t)
    lie = measured.pop("lie", None)
    fw.uki(line.format(served if booted is None else booted), lie=lie and line.format(lie), **measured)
    return _attest(t, gate, token, fw, (line.format(served),))


def test_measured_uki_boot_refuses_a_changed_initrd_kernel_or_command_line(served: LiveServer,
                                                                           tmp_path: Path) -> None:
    """A UKI (systemd-stub) under iPXE: the UKI whole in PCR 4 and its sections in 11 compare by
    value, so a changed initrd or kernel is refused; the command line systemd-stub measured into
    12 as text counts with this boot's credential made "this boot's", so the next boot is the
    same and a changed argument is refused, PCRs 9 and 12 named."""
    gate = _measured(served)
    tokens = iter(f"token-{i}-{os.urandom(8).hex()}" for i in range(100))
    with swtpm(tmp_path / "a") as a:
        assert _uki_boot(a, gate, next(tokens)).status == 200
        rec = served.store.tpms.get(MAC)
        assert rec is not None and rec.pcrs is not None
        kept = rec.pcrs["demo"]
        assert kept["12:log"] == "LoadOptions: ramboot-uki.efi console=ttyS0 ramboot.server=http://172.22.33.2 " \
            "ramboot.token=(this boot's)", kept
        assert kept["11"] != "00" * 32 and "11:log" not in kept, kept
        again = _uki_boot(a, gate, next(tokens))
        assert again.status == 200 and again.blob and a.activate(again.blob) is not None, again.why

        # The image's initrd changed (the kernel measures it into 9 too), or its kernel.
        initrd = _uki_boot(a, gate, next(tokens), initrd=b"the initrd, and a file more")
        assert initrd.status == 403 and initrd.event == "untrusted-boot", initrd.why
        assert "PCR 4, 9, 11 changed" in initrd.why and "(new: Linux initrd " in initrd.why, initrd.why
        kernel = _uki_boot(a, gate, next(tokens), kernel=b"another kernel")
        assert kernel.status == 403 and "PCR 4, 11 changed" in kernel.why, kernel.why

        # The operator's new kernel argument: its text in 12, the kernel's digest in 9.
        changed = _uki_boot(a, gate, next(tokens), served=" ramboot.extra=1")
        assert changed.status == 403 and "PCR 9, 12 changed" in changed.why, changed.why
        assert "(new: LoadOptions: ramboot-uki.efi " in changed.why and " ramboot.extra=1 " in changed.why, changed.why
        # One typed at iPXE's prompt; another boot's credential: both on the line, so both differ.
        typed = _uki_boot(a, gate, next(tokens), booted=" init=/bin/sh")
        assert typed.status == 403 and "PCR 9, 12 changed" in typed.why and " init=/bin/sh " in typed.why, typed.why
        old = next(tokens)
        stale = _uki_boot(a, gate, next(tokens), booted=f" ramboot.token={old}")
        assert stale.status == 403 and "PCR 9, 12 changed" in stale.why, stale.why
        # A log that shows the served line while the TPM measured another; a PCR 12 event whose
        # text is not what its digest is of (it counts by its digest, which is no kept one).
        assert "does not replay to the quoted PCR 12" in _uki_boot(a, gate, next(tokens), lie=" init=/bin/sh").why
        token = next(tokens)
        shown = f"ramboot-uki.efi console=ttyS0 ramboot.server=http://172.22.33.2 ramboot.token={token}"
        forged = _uki_boot(a, gate, token, text=shown + " ")
        assert forged.status == 403 and "PCR 12 changed" in forged.why, forged.why
        # Nothing changed: still the key.
        assert _uki_boot(a, gate, next(tokens)).status == 200


def test_the_server_knows_the_command_line_its_script_served_in_pcr_9(data_dir: Path, tmp_path: Path) -> None:
    """Through the server: the UKI line of the node's iPXE script (asked by MAC and UUID), as
    iPXE hands it to systemd-stub and that to the kernel's EFI stub, is what the TPM report's
    PCRs 9 and 12 are judged against; after the operator adds a kernel argument, the next boot
    is refused, both named."""
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir, FULL + "tpm_measured = true\n")
    uuid = "8d6bc9f6-3e6a-4c59-a3a4-8b6b5a4c2f10"
    srv.store.leases.save([LeaseRecord(lease_key(None, MAC), NODE_IP, MAC, time.time() + 600, None, None, None)])
    try:
        with swtpm(tmp_path / "a") as a:
            for args, status in (("", 200), ("", 200), ("ramboot.extra=1", 403)):
                srv.store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1", uuid=uuid, kernel_args=args))
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10, source_address=(NODE_IP, 0))
                conn.request("GET", f"/boot/{MAC.replace(':', '-')}/{uuid}.ipxe")
                script = conn.getresponse().read().decode()
                conn.close()
                m = re.search(r"^kernel \S+/(ramboot-uki\.efi) (.*ramboot\.token=(\S+)) \|\| goto", script, re.M)
                assert m, script
                fw = Firmware(a)
                fw.uki(f"{m[1]} {m[2]}")
                keys = _tpm_report(a)
                attest, sig, values = a.quote(PCRS, tpm_gate.quote_nonce(hashlib.sha256(m[3].encode()).hexdigest()))
                body = {**keys, "quote": attest, "quote_sig": sig, "pcrs": values, "eventlog": fw.log}
                st, why = _post(srv, f"/api/v1/nodes/{MAC}/tpm", m[3], json.dumps(
                    {k: v if isinstance(v, str) else base64.b64encode(v).decode() for k, v in body.items()}).encode(), {})
                assert st == status, why
        assert b"PCR 9, 12 changed" in why and b"+ramboot.extra=1" in why, why
        rec = srv.store.tpms.get(MAC)
        assert rec is not None and rec.pcrs is not None
        for pcr in ("9", "12"):  # the script was asked by UUID: its overlay URL names it
            log = rec.pcrs["demo"][f"{pcr}:log"]
            assert "LoadOptions: ramboot-uki.efi " in log and f"/{uuid}.tar ramboot.token=(this boot's)" in log, log
    finally:
        srv.close()


def test_quote_parsing_refuses_what_no_tpm_made() -> None:
    with pytest.raises(tpm.TpmError, match="not a quote"):
        tpm.parse_quote(b"\x00" * 80)
    with pytest.raises(tpm.TpmError):
        tpm.parse_quote(os.urandom(3000))
    for log in (b"\0" * 40, os.urandom(200)):
        with pytest.raises(tpm.TpmError):
            tpm.parse_event_log(log)
