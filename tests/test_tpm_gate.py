"""The TPM rule (tpm_gate.py) against a real server on loopback and real TPMs (swtpm):
enrolment (manual: pending, then `ramboot node trust`; first-boot), the boot key that only
the enrolled TPM recovers, the overlay sealed to it, and another TPM under the same MAC,
UUID and address getting nothing secret and being recorded as `untrusted-tpm`."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from httpserver import LiveServer
from ramboot import tpm_gate
from ramboot.inventory.records import NodeSpec
from ramboot.inventory.store import LeaseRecord
from ramboot.proto.dhcp_core import lease_key
from tpm_sim import Tpm, swtpm

MAC = "52:54:00:21:00:01"
UUID = "8b3c8f4e-2d1a-4c39-9f0e-5a6b7c8d9e21"
ATT = "52:54:00:66:66:66"  # the attacker's own NIC
NODE_IP, ATT_IP, OTHER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
MAC_H = MAC.replace(":", "-")
RAMBOOT = str(Path(sys.executable).with_name("ramboot"))


def _send(srv: LiveServer, method: str, path: str, source: str, token: str | None,
          body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20, source_address=(source, 0))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _report(t: Tpm) -> dict:
    """What the initramfs sends: its TPM's EK and a fresh AK, and the EK certificate from NV."""
    ek, ak = t.ek_ak()
    t.run("tpm2_nvread", "-o", "ekcert.der", "0x1c00002")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"ek": b64(ek), "ak": b64(ak), "ek_cert": b64((t.root / "ekcert.der").read_bytes())}


def _stages(srv: LiveServer) -> list[tuple[str, dict]]:
    srv.run(srv.events.flush)
    return [(e.stage, e.detail) for e in srv.store.events.of(MAC)]


def _untrusted_count(srv: LiveServer) -> float:
    _, body = _send(srv, "GET", "/metrics", "127.0.0.1", srv.token)
    m = re.search(rb'ramboot_tpm_attestations_total\{outcome="untrusted-tpm"\} ([0-9.]+)', body)
    return float(m.group(1)) if m else 0.0


FULL = '[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n[security]\noverlay_over_http = true\n'


@pytest.fixture
def served(data_dir: Path):
    write_fake_image(data_dir, "demo")
    (data_dir / "cfg.toml").write_text(f'data_dir = "{data_dir}"\n{FULL}')
    srv = LiveServer(data_dir, FULL)
    srv.store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1", uuid=UUID))
    srv.store.leases.save([LeaseRecord(lease_key(None, MAC), NODE_IP, MAC, time.time() + 600, None, None, UUID)])
    yield srv
    srv.close()


def test_manual_enrolment_then_only_that_tpm_opens_the_overlay(served: LiveServer, tmp_path: Path) -> None:
    srv = served
    with swtpm(tmp_path / "a") as a, swtpm(tmp_path / "b") as b:
        report = _report(a)
        # 1. first boot: the EK is kept, pending; nothing secret goes out.
        token = srv.node_token(MAC, NODE_IP)
        st, why = _send(srv, "POST", f"/api/v1/nodes/{MAC}/tpm", NODE_IP, token, report)
        assert st == 403 and b"pending" in why, why
        _, detail = srv.request("GET", f"/api/v1/nodes/{MAC}")
        assert isinstance(detail, dict)
        fp = detail["tpm"]["ek_fingerprint"]
        assert detail["tpm"]["state"] == "pending" and fp.startswith("sha256:") and "swtpm" in detail["tpm"]["ek_cert"]
        assert _send(srv, "GET", f"/overlay/{MAC_H}.tar", NODE_IP, token)[0] == 403
        show = subprocess.run([RAMBOOT, "node", "show", MAC, "--config", str(srv.config.data_dir / "cfg.toml")],
                              capture_output=True, text=True)
        assert "tpm: pending" in show.stdout and fp in show.stdout, show.stdout + show.stderr

        # 2. the operator trusts it (the CLI prints the EK's fingerprint to compare).
        out = subprocess.run([RAMBOOT, "node", "trust", MAC, "--config", str(srv.config.data_dir / "cfg.toml")],
                             capture_output=True, text=True)
        assert out.returncode == 0 and fp in out.stdout, out.stderr

        # 3. next boot: the boot key, wrapped to the EK; the overlay sealed to it.
        token = srv.node_token(MAC, NODE_IP)
        st, blob = _send(srv, "POST", f"/api/v1/nodes/{MAC}/tpm", NODE_IP, token, _report(a))
        assert st == 200, blob
        key = a.activate(blob)
        assert key is not None and len(key) == 32
        st, sha = _send(srv, "GET", f"/overlay/{MAC_H}.tar.sha256", NODE_IP, token)
        st2, sealed = _send(srv, "GET", f"/overlay/{MAC_H}.tar", NODE_IP, token)
        assert (st, st2) == (200, 200)
        assert sha.split()[0].decode() == hashlib.sha256(sealed).hexdigest()
        assert sealed.startswith(tpm_gate.MAGIC) and b"PRIVATE KEY" not in sealed
        with pytest.raises(tarfile.ReadError):
            tarfile.open(fileobj=io.BytesIO(sealed))
        names = tarfile.open(fileobj=io.BytesIO(tpm_gate.unseal(key, sealed))).getnames()
        assert any("ssh_host_ed25519_key" in n for n in names), names

        # 4. another TPM, same MAC, same UUID, same address: nothing secret, recorded loudly.
        before = _untrusted_count(srv)
        token = srv.node_token(MAC, NODE_IP)
        other = _report(b)
        st, why = _send(srv, "POST", f"/api/v1/nodes/{MAC}/tpm", NODE_IP, token, other)
        assert st == 403 and b"untrusted TPM" in why, why
        assert _untrusted_count(srv) - before == 1
        untrusted = [d for s, d in _stages(srv) if s == "untrusted-tpm"]
        assert untrusted and untrusted[-1]["ek"] != fp and "not the one" in untrusted[-1]["why"]
        st, sealed = _send(srv, "GET", f"/overlay/{MAC_H}.tar", NODE_IP, token)
        assert st == 200 and sealed.startswith(tpm_gate.MAGIC)  # ciphertext only: b has no key to open it
        with pytest.raises(ValueError):
            tpm_gate.unseal(key, sealed)  # not even the last boot's key opens this boot's overlay
        _, detail = srv.request("GET", f"/api/v1/nodes/{MAC}")
        assert isinstance(detail, dict)
        assert detail["tpm"]["state"] == "trusted" and detail["tpm"]["refused_fingerprint"] not in (None, fp)
        show = subprocess.run([RAMBOOT, "node", "show", MAC, "--config", str(srv.config.data_dir / "cfg.toml")],
                              capture_output=True, text=True)
        assert "tpm: trusted" in show.stdout and "REFUSED" in show.stdout, show.stdout

        # 5. a replaced board: the operator takes the refused TPM on purpose.
        st, out_ = srv.request("POST", f"/api/v1/nodes/{MAC}/tpm/trust", {"replace": True})
        assert st == 200 and isinstance(out_, dict) and out_["ek_fingerprint"] == detail["tpm"]["refused_fingerprint"]


def test_forged_requests_get_no_boot_key(served: LiveServer, tmp_path: Path) -> None:
    """A forged MAC, client id, UUID, address or credential: the access rule refuses before any TPM work."""
    srv = served
    srv.store.tpms.enrol(_trusted(tmp_path))
    # The attacker's lease for the node's chaddr under a client id of its own, and its own NIC.
    srv.store.leases.save([
        LeaseRecord(lease_key("ff00112233", MAC), OTHER_IP, MAC, time.time() + 600, "ff00112233", None, UUID),
        LeaseRecord(lease_key(None, ATT), ATT_IP, ATT, time.time() + 600, None, None, None)])
    with swtpm(tmp_path / "c") as c:
        report = _report(c)
    assert srv.node_token(MAC, OTHER_IP) is None  # forged chaddr + own client id: no credential at all
    st, script = _send(srv, "GET", f"/boot/{ATT.replace(':', '-')}/{UUID}.ipxe", ATT_IP, None)
    assert st == 200 and b"ramboot.token=" not in script  # own MAC, the node's UUID: none either
    token = srv.node_token(MAC, NODE_IP)
    for path, source, tok in [
        (f"/api/v1/nodes/{MAC}/tpm", OTHER_IP, token),  # the credential, from another address
        (f"/api/v1/nodes/{MAC}/tpm", NODE_IP, None),  # the address, no credential
        (f"/api/v1/nodes/{MAC}/tpm", NODE_IP, "forged-token-forged-token"),
        (f"/api/v1/nodes/{ATT}/tpm", NODE_IP, token),  # another MAC's name
        (f"/api/v1/nodes/{ATT}/tpm", ATT_IP, token),  # from the UUID forger's own lease
    ]:
        st, why = _send(srv, "POST", path, source, tok, report)
        assert st == 403, (path, source, why)
    st, why = _send(srv, "POST", f"/api/v1/nodes/{MAC}/tpm", NODE_IP, token, {"ek": "AAAA" * 4, "ak": "AAAA" * 4})
    assert st == 400 and b"public area" in why


def _trusted(tmp_path: Path):
    """Enrol and trust a TPM for MAC (first-boot rules), for the forgery cases."""
    with swtpm(tmp_path / "t") as t:
        ek, _ = t.ek_ak()
    from ramboot.inventory.records import TpmRecord
    from ramboot.tpm import parse_public
    return TpmRecord(MAC, parse_public(ek).fingerprint, base64.b64encode(ek).decode(), None, "trusted",
                     time.time(), time.time())


def test_first_boot_keeps_the_first_ek(data_dir: Path, tmp_path: Path) -> None:
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir, FULL + 'tpm_enroll = "first-boot"\n')
    try:
        srv.store.nodes.put(NodeSpec(MAC, image="demo"))
        srv.store.leases.save([LeaseRecord(lease_key(None, MAC), NODE_IP, MAC, time.time() + 600, None, None, None)])
        with swtpm(tmp_path / "a") as a, swtpm(tmp_path / "b") as b:
            st, blob = _send(srv, "POST", f"/api/v1/nodes/{MAC}/tpm", NODE_IP, srv.node_token(MAC, NODE_IP),
                             _report(a))
            assert st == 200 and a.activate(blob) is not None
            st, _ = _send(srv, "POST", f"/api/v1/nodes/{MAC}/tpm", NODE_IP, srv.node_token(MAC, NODE_IP),
                          _report(b))
            assert st == 403
        want, deadline = ["tpm-enrolled", "untrusted-tpm"], time.monotonic() + 10
        while (got := [s for s, _ in _stages(srv) if s.startswith(("tpm", "untrusted"))]) != want \
                and time.monotonic() < deadline:  # the event log writes in batches; a loaded machine is slow
            time.sleep(0.2)
        assert got == want
    finally:
        srv.close()


def test_a_node_without_a_tpm_keeps_the_access_rule(served: LiveServer) -> None:
    token = served.node_token(MAC, NODE_IP)
    st, body = _send(served, "GET", f"/overlay/{MAC_H}.tar", NODE_IP, token)
    assert st == 200 and tarfile.open(fileobj=io.BytesIO(body)).getnames()
    st, body = _send(served, "POST", f"/api/v1/nodes/{MAC}/events", NODE_IP, token,
                     {"stage": "untrusted-tpm", "detail": {}})
    assert st == 400  # a node cannot write the server's TPM notes into its own timeline


def test_ek_certificates_for_another_key_are_refused_and_odd_ones_noted(served: LiveServer, tmp_path: Path) -> None:
    gate = tpm_gate.TpmGate("first-boot", served.store.tpms, served.store.secrets.derived_key)
    with swtpm(tmp_path / "a") as a, swtpm(tmp_path / "b") as b:
        mine, theirs = _report(a), _report(b)
    raw = {k: base64.b64decode(v) for k, v in mine.items()}
    other_cert = base64.b64decode(theirs["ek_cert"])
    answer = gate.attest(MAC, "0" * 64, raw["ek"], raw["ak"], other_cert)
    assert answer.status == 400 and "another key" in answer.why and served.store.tpms.get(MAC) is None
    answer = gate.attest(MAC, "0" * 64, raw["ek"], raw["ak"], b"\x30\x03\x02\x01\x00")
    assert answer.status == 200 and answer.blob
    rec = served.store.tpms.get(MAC)
    assert rec is not None and rec.state == "trusted" and (rec.ek_cert or "").startswith("unreadable")
