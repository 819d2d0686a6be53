"""The one access rule (access.py): who is node M, the per-boot credential, contested boots.

Forged chaddr, client id, UUID, address and source port, in every DHCP mode. The rule
runs over a real SQLite store; the end-to-end cases drive a real HTTP server on
loopback from several 127.0.0.x source addresses (each its own machine).
"""

from __future__ import annotations

import errno
import http.client
import random
import re
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from httpserver import LiveServer
from ramboot.access import AccessRule, hardware_lease
from ramboot.inventory.records import NodeSpec
from ramboot.inventory.store import LeaseRecord, Store
from ramboot.proto.dhcp_core import lease_key
from ramboot.proto.pxe import uuid_to_wire

MAC = "52:54:00:0a:0b:0c"  # the node
ATT = "52:54:00:66:66:66"  # the attacker's own NIC
UUID = "8b3c8f4e-2d1a-4c39-9f0e-5a6b7c8d9e0f"
NODE_IP, ATT_IP, OTHER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
ATTACKER_CID = "ff00112233"  # a client id of the attacker's own choosing


def _lease(mac: str, ip: str, client_id: str | None = None, uuid: str | None = None) -> LeaseRecord:
    return LeaseRecord(lease_key(client_id, mac), ip, mac, time.time() + 600,
                       client_id if lease_key(client_id, mac).startswith("id:") else None, None, uuid)


def _guid_hex(uuid: str) -> str:
    """The UUID as a firmware sends it (option 97's and a type 0 client id's byte order)."""
    return uuid_to_wire(uuid).hex()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path / 'r.db'}")
    s.nodes.put(NodeSpec(MAC, image="demo", uuid=UUID))
    yield s
    s.close()


def rule(store: Store, mode: str = "full", proxy_secrets: str = "none") -> AccessRule:
    return AccessRule(mode, proxy_secrets, store.directory, store.credentials)


# -- who is node M: its hardware lease, never a lease another client id took -----------------
@pytest.mark.parametrize("lease, ok", [
    (_lease(MAC, NODE_IP), True),  # no client id: the MAC
    (_lease(MAC, NODE_IP, "01" + MAC.replace(":", "")), True),  # 01 + MAC (iPXE, udhcpc)
    (_lease(MAC, NODE_IP, "00" + _guid_hex(UUID)), True),  # the firmware's machine id = the node's UUID
    (_lease(MAC, NODE_IP, "00" + "11" * 16), False),  # a machine id that is not the node's UUID
    (_lease(MAC, NODE_IP, ATTACKER_CID), False),  # forged chaddr under the attacker's own client id
    (_lease(ATT, NODE_IP), False),  # the address, but another MAC's lease
], ids=["no-client-id", "01-mac", "machine-id", "forged-machine-id", "forged-chaddr", "other-mac"])
def test_only_the_hardware_lease_is_the_node(store, lease, ok):
    store.leases.save([lease])
    assert rule(store).is_node(MAC, NODE_IP).ok is ok
    assert (hardware_lease([lease], MAC, UUID) is not None) is ok


def test_a_forged_chaddr_lease_beside_the_real_one_is_not_the_node(store):
    store.leases.save([_lease(MAC, NODE_IP), _lease(MAC, ATT_IP, ATTACKER_CID)])
    r = rule(store)
    assert r.is_node(MAC, NODE_IP).ok
    v = r.is_node(MAC, ATT_IP)
    assert not v.ok and "does not hold" in v.why
    assert r.mint(MAC, None, None, ATT_IP) is None  # no credential for the forger


def test_a_uuid_in_the_url_is_not_proof(store):
    """Item 1: the attacker's own NIC with the victim's UUID resolves to the victim's node, but
    its lease carries no such UUID (only the firmware's option 97 would), so nothing is minted."""
    store.leases.save([_lease(ATT, ATT_IP)])
    r = rule(store)
    assert r.mint(ATT, MAC, UUID, ATT_IP) is None
    store.leases.save([_lease(ATT, ATT_IP, uuid=UUID)])  # the firmware said this UUID in its DHCP
    assert r.mint(ATT, MAC, UUID, ATT_IP) is not None


def test_a_firmwares_own_machine_id_opens_a_boot_but_claims_nothing(store):
    """A UEFI firmware's lease (client id type 0, its option 97) of a node registered without
    its UUID: its GRUB config gets a credential (the boot is opened), but secrets and reports
    need the MAC-keyed lease the initramfs takes. Anyone can forge a type 0 id and option 97."""
    other = "11112222-3333-4444-5555-666677778888"
    store.nodes.put(NodeSpec(MAC, image="demo"))  # no UUID registered
    store.leases.save([_lease(MAC, ATT_IP, "00" + _guid_hex(other), uuid=other)])
    r = rule(store)
    token = r.mint(MAC, None, None, ATT_IP)
    assert token is not None
    assert r.claim(MAC, ATT_IP, token).status == 403
    assert not r.reporter(MAC, ATT_IP, token).ok
    store.leases.save([_lease(MAC, NODE_IP)])  # the initramfs's own lease
    assert r.claim(MAC, NODE_IP, token).status == 200


# -- the credential: once per boot, a second claim is contested ------------------------------
def test_the_credential_is_claimed_once_and_a_second_claim_is_contested(store):
    store.leases.save([_lease(MAC, NODE_IP)])
    r = rule(store)
    token = r.mint(MAC, None, None, NODE_IP)
    assert token and r.claim(MAC, NODE_IP, token, peek=True).status == 200  # the sha256 file
    assert r.claim(MAC, NODE_IP, token).status == 200
    again = r.claim(MAC, NODE_IP, token)
    assert (again.status, again.contested) == (409, True) and "already claimed" in again.why
    assert store.credentials.current(MAC).state == "contested"


def test_a_superseded_credential_is_contested_and_a_forged_one_refused(store):
    store.leases.save([_lease(MAC, NODE_IP)])
    r = rule(store)
    first = r.mint(MAC, None, None, NODE_IP)
    second = r.mint(MAC, None, None, NODE_IP)  # a second script for the same node: the first is dead
    assert r.claim(MAC, NODE_IP, first).contested
    assert r.claim(MAC, NODE_IP, "A" * 32).status == 403  # never minted
    assert r.claim(MAC, NODE_IP, None).status == 403
    assert r.claim(ATT, NODE_IP, second).status == 403  # another NIC's name in the URL
    assert r.claim(MAC, OTHER_IP, second).status == 403  # from an address that is not the node
    assert r.claim(MAC, NODE_IP, second).status == 200


@pytest.mark.parametrize("mode", ["proxy", "off"])
def test_proxy_and_off_mode_serve_no_secret_by_default(store, mode):
    r = rule(store, mode)
    token = r.mint(MAC, None, None, NODE_IP)
    assert token is not None  # minted (it authorizes reports), but it unlocks nothing
    c = r.claim(MAC, NODE_IP, token)
    assert c.status == 403 and 'proxy_secrets = "first-claim"' in c.why


@pytest.mark.parametrize("mode", ["proxy", "off"])
def test_first_claim_is_the_weaker_rule_by_name(store, mode):
    r = rule(store, mode, "first-claim")
    token = r.mint(MAC, None, None, NODE_IP)
    assert r.claim(MAC, OTHER_IP, token).status == 403  # only the address it was minted to
    assert r.claim(MAC, NODE_IP, token).status == 200
    assert r.claim(MAC, NODE_IP, token).contested


def test_reports_need_the_hardware_lease_or_the_current_credential(store):
    store.leases.save([_lease(MAC, NODE_IP), _lease(MAC, ATT_IP, ATTACKER_CID)])
    r = rule(store)
    assert r.reporter(MAC, NODE_IP, None).ok
    assert not r.reporter(MAC, ATT_IP, None).ok  # the forged-chaddr lease (item 3)
    assert not r.reporter(MAC, OTHER_IP, r.mint(MAC, None, None, NODE_IP)).ok  # full mode: the lease's address
    proxy = rule(store, "proxy")
    old = proxy.mint(MAC, None, None, NODE_IP)
    new = proxy.mint(MAC, None, None, NODE_IP)
    assert proxy.reporter(MAC, OTHER_IP, new).ok
    assert not proxy.reporter(MAC, OTHER_IP, old).ok
    assert not proxy.reporter(MAC, NODE_IP, None).ok  # proxy mode: no address is proof
    assert proxy.reporter(MAC, OTHER_IP, proxy.mint(MAC, None, None, OTHER_IP)).ok


# -- over the wire: a real server, several source addresses --------------------------------
def _get(srv: LiveServer, path: str, source: str, token: str | None = None,
         privileged_port: bool = False) -> tuple[int, bytes]:
    """GET from `source`; `privileged_port`: from a port below 1024 (what Warewulf trusts)."""
    for _ in range(20):
        port = random.randint(600, 1023) if privileged_port else 0
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10, source_address=(source, port))
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
            r = conn.getresponse()
            return r.status, r.read()
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
        finally:
            conn.close()
    raise AssertionError("no free privileged source port")


def _token(script: bytes) -> str | None:
    m = re.search(rb"ramboot\.token=([A-Za-z0-9_-]+)", script)
    return m.group(1).decode() if m else None


def _stages(srv: LiveServer, mac: str) -> list[str]:
    srv.run(srv.events.flush)
    return [e.stage for e in srv.store.events.of(mac)]


def _contested(srv: LiveServer) -> float:
    """The process's count of contested boots (the metrics are process-wide)."""
    m = re.search(rb"ramboot_boots_contested_total ([0-9.]+)", _get(srv, "/metrics", "127.0.0.1", srv.token)[1])
    return float(m.group(1)) if m else 0.0


FULL = '[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n[security]\noverlay_over_http = true\n'


def test_over_the_wire_forged_chaddr_uuid_address_and_port_get_nothing(data_dir):
    """Items 1, 3 and 13 against a real server: each forgery gets a script with no credential,
    opens no boot in the node's timeline and gets no overlay; the node gets its own, once."""
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir, FULL)
    try:
        srv.store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1", uuid=UUID))
        srv.store.leases.save([_lease(MAC, NODE_IP), _lease(MAC, OTHER_IP, ATTACKER_CID), _lease(ATT, ATT_IP)])
        mac_h, att_h = MAC.replace(":", "-"), ATT.replace(":", "-")
        forged = [
            (f"/boot/{mac_h}.ipxe", OTHER_IP, False),  # forged chaddr, own client id (item 3)
            (f"/boot/{mac_h}.ipxe", ATT_IP, False),  # just another address (item 13)
            (f"/boot/{mac_h}.ipxe", ATT_IP, True),  # a privileged source port proves nothing
            (f"/boot/{att_h}/{UUID}.ipxe", ATT_IP, False),  # own MAC, the victim's UUID (item 1)
        ]
        for path, source, privileged in forged:
            st, script = _get(srv, path, source, privileged_port=privileged)
            assert st == 200 and b"ramboot.overlay=" in script and _token(script) is None, (path, source)
        assert "script" not in _stages(srv, MAC)
        for path, source in [(f"/overlay/{mac_h}.tar", OTHER_IP), (f"/overlay/{att_h}/{UUID}.tar", ATT_IP)]:
            assert _get(srv, path, source)[0] == 403

        before = _contested(srv)
        st, script = _get(srv, f"/boot/{mac_h}.ipxe", NODE_IP)
        token = _token(script)
        assert st == 200 and token and "script" in _stages(srv, MAC)
        assert _get(srv, f"/overlay/{mac_h}.tar", OTHER_IP, token)[0] == 403  # the token, from the forger
        assert _get(srv, f"/overlay/{att_h}.tar", ATT_IP, token)[0] == 403  # under another NIC's name
        st, sha = _get(srv, f"/overlay/{mac_h}.tar.sha256", NODE_IP, token)
        st2, body = _get(srv, f"/overlay/{mac_h}.tar", NODE_IP, token)
        assert (st, st2) == (200, 200) and len(sha.split()[0]) == 64 and body
        st, why = _get(srv, f"/overlay/{mac_h}.tar", NODE_IP, token)  # a second claim on this boot
        assert st == 409 and b"contested" in why
        assert "contested" in _stages(srv, MAC)
        st, detail = srv.request("GET", f"/api/v1/nodes/{MAC}", token=srv.config.api.token)
        assert st == 200 and detail["last_boot"]["contested"] is True, detail
        assert _contested(srv) - before == 1
    finally:
        srv.close()


def test_over_the_wire_proxy_mode_hands_out_no_overlay(data_dir):
    """Item 2: in proxy mode the address that fetched a script is no proof of anything."""
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir, '[dhcp]\nmode = "proxy"\n[security]\noverlay_over_http = true\n')
    try:
        srv.store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1"))
        mac_h = MAC.replace(":", "-")
        st, script = _get(srv, f"/boot/{mac_h}.ipxe", ATT_IP)
        st, why = _get(srv, f"/overlay/{mac_h}.tar", ATT_IP, _token(script))
        assert st == 403 and b"proxy_secrets" in why
    finally:
        srv.close()


def test_overlays_go_over_https_unless_the_operator_allows_http(data_dir):
    """Item 12: on the plain HTTP listener the overlay is refused, credential or not."""
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir, '[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n'
                               '[security]\noverlay_over_http = false\n')
    try:
        srv.store.nodes.put(NodeSpec(MAC, image="demo"))
        srv.store.leases.save([_lease(MAC, NODE_IP)])
        mac_h = MAC.replace(":", "-")
        _, script = _get(srv, f"/boot/{mac_h}.ipxe", NODE_IP)
        st, why = _get(srv, f"/overlay/{mac_h}.tar", NODE_IP, _token(script))
        assert st == 403 and b"HTTPS" in why
    finally:
        srv.close()


def test_a_forged_chaddr_lease_never_names_the_node_in_hosts_or_certificates(store):
    """Item 3: /etc/hosts of every node and the principals of the node's host certificate come
    from its hardware lease; the lease a forger took for its chaddr names nothing."""
    from ramboot.overlays import addresses

    store.leases.save([_lease(MAC, NODE_IP)])
    store.leases.save([_lease(MAC, OTHER_IP, ATTACKER_CID)])  # newer: it expires later
    assert addresses(store)[MAC] == NODE_IP
