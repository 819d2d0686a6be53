"""RFC 2131 server behaviour of the pure core: allocation, the REQUEST states, replies' addressing."""

from __future__ import annotations

import pytest

from dhcp_pkt import PXE_BIOS, SERVER, Rig, mac_bytes, request, wire
from ramboot.inventory.store import LeaseRecord, NodeSpec, Store
from ramboot.proto.dhcp_codec import FLAG_BROADCAST, MsgType, Opt
from ramboot.proto.dhcp_core import OFFER_HOLD, lease_key

A = "52:54:00:00:00:01"
B = "52:54:00:00:00:02"


@pytest.fixture
def rig(data_dir):
    r = Rig(data_dir)
    yield r
    r.close()


def test_dora_allocates_from_the_range_and_persists_the_ack(rig):
    offer, ack, res = rig.dora(A)
    assert offer.msg_type == MsgType.OFFER and ack.msg_type == MsgType.ACK
    assert offer.yiaddr == ack.yiaddr == "10.231.9.100"
    assert ack.server_id == SERVER and ack.u32_option(Opt.LEASE_TIME) == 600
    assert ack.u32_option(Opt.RENEWAL_TIME) == 300 and ack.u32_option(Opt.REBINDING_TIME) == 525
    assert ack.ip_option(Opt.SUBNET_MASK) == "255.255.255.0"
    assert res.needs_commit and res.upserts[0].ip == "10.231.9.100" and res.upserts[0].mac == A
    assert res.bound == ("10.231.9.100", A)
    assert [e.stage for e in res.events] == ["dhcp-ack"]


def test_offer_is_not_persisted_and_the_same_client_gets_the_same_offer(rig):
    res, [o1] = rig.send(request(MsgType.DISCOVER, A))
    assert not res.needs_commit and res.events[0].stage == "dhcp-offer"
    _, [o2] = rig.send(request(MsgType.DISCOVER, A))
    _, [o3] = rig.send(request(MsgType.DISCOVER, B))
    assert o1.yiaddr == o2.yiaddr != o3.yiaddr


def test_requested_address_is_honoured_when_free(rig):
    _, [o] = rig.send(request(MsgType.DISCOVER, A, options={Opt.REQUESTED_IP: "10.231.9.103"}))
    assert o.yiaddr == "10.231.9.103"
    _, [o] = rig.send(request(MsgType.DISCOVER, B, options={Opt.REQUESTED_IP: "10.231.9.250"}))
    assert o.yiaddr == "10.231.9.100"  # outside the range: ignored


def test_client_identifier_keys_the_lease(rig):
    cid = {Opt.CLIENT_ID: b"\x01client-one"}
    _, ack, _ = rig.dora(A, cid)
    _, [o] = rig.send(request(MsgType.DISCOVER, B, options=cid))  # same client id, new NIC
    assert o.yiaddr == ack.yiaddr


def test_loader_sending_hw_client_id_keeps_the_firmwares_lease(rig):
    """OVMF's PXE sends no option 61; the iPXE it loads sends 01+MAC. One lease, not two."""
    _, ack, _ = rig.dora(A)
    hw_cid = {Opt.CLIENT_ID: b"\x01" + mac_bytes(A)}
    _, ack2, _ = rig.dora(A, hw_cid)
    assert ack2.yiaddr == ack.yiaddr


def test_pool_exhaustion_means_silence_and_expired_leases_are_reused(rig):
    macs = [f"52:54:00:00:01:{i:02x}" for i in range(5)]
    for m in macs:
        rig.dora(m)
    res, sends = rig.send(request(MsgType.DISCOVER, B))
    assert sends == [] and res.outcome == "exhausted"
    rig.now += 601
    _, [o] = rig.send(request(MsgType.DISCOVER, B))
    assert o.yiaddr in {f"10.231.9.{i}" for i in range(100, 105)}


def test_an_offer_is_held_while_the_pool_has_other_addresses(rig):
    _, [first] = rig.send(request(MsgType.DISCOVER, A))
    for i in range(3):
        rig.send(request(MsgType.DISCOVER, f"52:54:00:00:02:{i:02x}"))
    _, [last_free] = rig.send(request(MsgType.DISCOVER, B))
    assert last_free.yiaddr != first.yiaddr  # one address was left: A's offer is kept
    _, [again] = rig.send(request(MsgType.DISCOVER, A))
    assert again.yiaddr == first.yiaddr
    rig.now += OFFER_HOLD + 1  # offers expire
    _, [o] = rig.send(request(MsgType.DISCOVER, "52:54:00:00:03:01"))
    assert o.yiaddr in {f"10.231.9.{i}" for i in range(100, 105)}


def test_a_discover_flood_from_made_up_macs_never_keeps_a_real_client_out(rig):
    """Every DISCOVER from a random MAC holds an address for OFFER_HOLD seconds; on a full pool
    the oldest offer goes to the next client, so a real client still gets through, and bound
    leases are never taken."""
    _, bound, _ = rig.dora(A)
    for i in range(1000):
        rig.send(request(MsgType.DISCOVER, f"02:66:00:00:{i >> 8:02x}:{i & 255:02x}"))
        rig.now += 0.001
    offer, ack, res = rig.dora(B)
    assert ack.msg_type == MsgType.ACK and ack.yiaddr != bound.yiaddr and res.outcome == "ack"
    # The bound lease stays its holder's through the flood.
    _, ack_a, _ = rig.dora(A)
    assert ack_a.msg_type == MsgType.ACK and ack_a.yiaddr == bound.yiaddr


def test_a_full_pool_of_bound_leases_stays_silent_and_is_not_searched_per_packet(rig):
    macs = [f"52:54:00:00:01:{i:02x}" for i in range(5)]
    for m in macs:
        rig.dora(m)
    looked: list[str] = []
    reserved = rig.server.reserved

    class Counting(dict):  # the reserved-address map, consulted once per address tried: counts them
        def __len__(self):
            return 1

        def get(self, ip, default=None):
            looked.append(ip)
            return reserved().get(ip, default)

    rig.server.reserved = Counting  # (an attribute, not a method: the compiled DhcpCore's methods are fixed)
    res, sends = rig.send(request(MsgType.DISCOVER, "02:66:00:00:00:ff"))
    assert sends == [] and res.outcome == "exhausted" and len(looked) >= 5  # the first walks the range
    looked.clear()
    for i in range(200):  # the others within RESCAN_AFTER do not walk it again
        res, sends = rig.send(request(MsgType.DISCOVER, f"02:66:00:00:00:{i:02x}"))
        assert sends == [] and res.outcome == "exhausted"
    assert len(looked) <= 200, len(looked)  # at most the client's own wish each, never the range
    rig.server.reserved = reserved
    rig.send(request(MsgType.RELEASE, macs[0], ciaddr="10.231.9.100", options={Opt.SERVER_ID: SERVER}),
             src=("10.231.9.100", 68))
    _, [o] = rig.send(request(MsgType.DISCOVER, B))  # a released address is seen at once
    assert o.yiaddr == "10.231.9.100"


def test_selecting_another_server_frees_our_offer(rig):
    _, [o] = rig.send(request(MsgType.DISCOVER, A))
    res, sends = rig.send(request(MsgType.REQUEST, A, options={Opt.SERVER_ID: "10.231.9.254", Opt.REQUESTED_IP: o.yiaddr}))
    assert sends == [] and res.outcome == "other-server" and not res.needs_commit
    _, [o2] = rig.send(request(MsgType.DISCOVER, B, options={Opt.REQUESTED_IP: o.yiaddr}))
    assert o2.yiaddr == o.yiaddr


@pytest.mark.parametrize(
    "options, fields, outcome",
    [
        # INIT-REBOOT: requested-ip, no server id, ciaddr 0
        ({Opt.REQUESTED_IP: "10.231.9.102"}, {}, "ack"),
        ({Opt.REQUESTED_IP: "192.168.7.7"}, {}, "nak"),  # wrong network: MUST NAK
        ({Opt.REQUESTED_IP: "10.231.9.50"}, {}, "nak"),  # our subnet, not our range
        # SELECTING an address we never offered but is free: we are authoritative
        ({Opt.SERVER_ID: SERVER, Opt.REQUESTED_IP: "10.231.9.101"}, {}, "ack"),
        # RENEWING / REBINDING: ciaddr only
        ({}, {"ciaddr": "10.231.9.104"}, "ack"),
        ({}, {}, "ignored"),  # no address named at all
    ],
)
def test_request_states(rig, options, fields, outcome):
    res, _ = rig.send(request(MsgType.REQUEST, A, options=options, **fields))
    assert res.outcome == outcome


def test_nak_for_an_address_bound_to_another_client(rig):
    _, ack, _ = rig.dora(A)
    res, [nak] = rig.send(request(MsgType.REQUEST, B, options={Opt.REQUESTED_IP: ack.yiaddr}))
    assert res.outcome == "nak" and nak.msg_type == MsgType.NAK
    assert nak.yiaddr == "0.0.0.0" and nak.server_id == SERVER and Opt.LEASE_TIME not in nak.options
    assert not res.needs_commit


def test_renewal_extends_the_lease(rig):
    _, ack, _ = rig.dora(A)
    rig.now += 400
    res, [ack2] = rig.send(request(MsgType.REQUEST, A, ciaddr=ack.yiaddr), src=(ack.yiaddr, 68))
    assert res.outcome == "ack" and ack2.yiaddr == ack.yiaddr and ack2.ciaddr == ack.yiaddr
    assert res.upserts[0].expires == rig.now + 600


def test_release_frees_the_address_and_deletes_the_lease(rig):
    _, ack, _ = rig.dora(A)
    res, sends = rig.send(request(MsgType.RELEASE, A, ciaddr=ack.yiaddr, options={Opt.SERVER_ID: SERVER}),
                          src=(ack.yiaddr, 68))
    assert sends == [] and res.deletes == [ack.yiaddr]
    _, [o] = rig.send(request(MsgType.DISCOVER, B, options={Opt.REQUESTED_IP: ack.yiaddr}))
    assert o.yiaddr == ack.yiaddr
    res, _ = rig.send(request(MsgType.RELEASE, B, ciaddr="10.231.9.104"), src=("10.231.9.104", 68))  # not B's
    assert res.outcome == "ignored" and not res.deletes


@pytest.mark.parametrize("src", [("10.231.9.150", 68), ("0.0.0.0", 68), ("10.231.9.1", 67)],
                         ids=["another-client", "no-address", "a-relay"])
def test_a_release_not_from_the_holders_address_frees_nothing(rig, src):
    """RFC 2131 §4.4.6: the holder releases from its address. A spoofed RELEASE (right chaddr,
    client id and ciaddr, from anywhere else) leaves the lease alone."""
    _, ack, _ = rig.dora(A)
    res, _ = rig.send(request(MsgType.RELEASE, A, ciaddr=ack.yiaddr, options={Opt.SERVER_ID: SERVER}), src=src)
    assert (res.outcome, res.reason, res.deletes) == ("ignored", "not-the-holder", [])
    _, acks = rig.send(request(MsgType.REQUEST, A, ciaddr=ack.yiaddr), src=(ack.yiaddr, 68))
    assert acks[0].msg_type == MsgType.ACK and acks[0].yiaddr == ack.yiaddr  # still A's


def test_a_decline_counts_only_right_after_the_ack(rig):
    """A DECLINE follows the ACK's ARP probe; one long after it (spoofed, to take the address
    from its holder and quarantine it) is ignored."""
    _, ack, _ = rig.dora(A)
    rig.now += 120
    res, _ = rig.send(request(MsgType.DECLINE, A, options={Opt.SERVER_ID: SERVER, Opt.REQUESTED_IP: ack.yiaddr}))
    assert (res.outcome, res.reason, res.deletes) == ("ignored", "decline-too-late", [])


def test_unregistered_machines_have_a_cap_registered_ones_do_not(data_dir):
    r = Rig(data_dir, extra="[security]\nmax_unknown_leases = 3\n")
    try:
        made_up = [f"02:66:00:00:02:{i:02x}" for i in range(5)]
        outcomes = [r.send(request(MsgType.DISCOVER, m))[0] for m in made_up]
        assert [o.outcome for o in outcomes] == ["offer"] * 3 + ["ignored"] * 2
        assert outcomes[-1].reason == "unknown-cap"
        assert r.send(request(MsgType.DISCOVER, made_up[0]))[0].outcome == "offer"  # one that holds an offer
        r.store.nodes.put(NodeSpec(B, image="demo"))
        r.server = r.make(())
        for m in made_up[:3]:
            r.send(request(MsgType.DISCOVER, m))
        assert r.send(request(MsgType.DISCOVER, made_up[4]))[0].reason == "unknown-cap"
        assert r.send(request(MsgType.DISCOVER, B))[0].outcome == "offer"  # registered: no cap
        r.now += 61  # the offers expire: room again
        assert r.send(request(MsgType.DISCOVER, made_up[4]))[0].outcome == "offer"
    finally:
        r.close()


def test_decline_quarantines_the_address(rig):
    _, ack, _ = rig.dora(A)
    res, sends = rig.send(request(MsgType.DECLINE, A, options={Opt.SERVER_ID: SERVER, Opt.REQUESTED_IP: ack.yiaddr}))
    assert sends == [] and res.outcome == "declined" and res.deletes == [ack.yiaddr]
    _, [o] = rig.send(request(MsgType.DISCOVER, A))
    assert o.yiaddr != ack.yiaddr
    res, _ = rig.send(request(MsgType.REQUEST, B, options={Opt.REQUESTED_IP: ack.yiaddr}))
    assert res.outcome == "nak"


def test_inform_gives_configuration_without_an_address(rig):
    res, [ack] = rig.send(request(MsgType.INFORM, A, ciaddr="10.231.9.77"), src=("10.231.9.77", 68))
    assert ack.msg_type == MsgType.ACK and ack.yiaddr == "0.0.0.0"
    assert Opt.LEASE_TIME not in ack.options and ack.ip_option(Opt.SUBNET_MASK) == "255.255.255.0"
    assert (res.sends[0].host, res.sends[0].port) == ("10.231.9.77", 68) and not res.needs_commit


def test_fixed_address_for_a_known_node_and_kept_from_others(rig):
    rig.store.nodes.put(NodeSpec(mac=A, image="demo", ip="10.231.9.101", hostname="n1"))
    rig.store.nodes.put(NodeSpec(mac="52:54:00:00:00:09", image="demo", ip="10.231.9.100"))
    offer, ack, _ = rig.dora(A)
    assert offer.yiaddr == ack.yiaddr == "10.231.9.101"
    assert ack.options[Opt.HOSTNAME] == b"n1"
    _, [o] = rig.send(request(MsgType.DISCOVER, B))
    assert o.yiaddr not in ("10.231.9.100", "10.231.9.101")
    # asking for another address than its fixed one: NAK, so it rediscovers
    res, _ = rig.send(request(MsgType.REQUEST, A, options={Opt.REQUESTED_IP: "10.231.9.103"}))
    assert res.outcome == "nak"


def test_fixed_address_outside_the_range_but_on_the_subnet(rig):
    rig.store.nodes.put(NodeSpec(mac=A, image="demo", ip="10.231.9.20"))
    _, ack, _ = rig.dora(A)
    assert ack.yiaddr == "10.231.9.20"


def test_leases_loaded_at_start_are_honoured(rig):
    srv = rig.make([LeaseRecord(key=lease_key(None, A), ip="10.231.9.103", mac=A, expires=rig.now + 300)])
    rig.server = srv
    _, [o] = rig.send(request(MsgType.DISCOVER, A))
    assert o.yiaddr == "10.231.9.103"
    res, _ = rig.send(request(MsgType.REQUEST, B, options={Opt.REQUESTED_IP: "10.231.9.103"}))
    assert res.outcome == "nak"


def test_one_mac_with_and_without_a_client_id_keeps_both_leases_across_a_restart(rig):
    """RFC 2131 §4.2: the client identifier names the client, else the MAC. One NIC that
    asks once as itself (no option 61) and once with a client id of its own holds two
    leases; both are on disk, and after a restart neither address goes to anyone else."""
    cid = {Opt.CLIENT_ID: b"\xff\x00\x00\x00\x01" + b"duid-of-the-os"}
    committed = []
    offer1, ack1, res1 = rig.dora(A)
    committed += res1.upserts
    offer2, ack2, res2 = rig.dora(A, cid)
    committed += res2.upserts
    assert ack1.yiaddr != ack2.yiaddr
    rig.store.leases.save(committed)
    assert sorted(lease.ip for lease in rig.store.leases.load()) == sorted([ack1.yiaddr, ack2.yiaddr])

    rig.server = rig.make(rig.store.leases.load())  # the restart
    taken = {ack1.yiaddr, ack2.yiaddr}
    for i in range(3):  # the rest of the range goes to others, never a held address
        _, [o] = rig.send(request(MsgType.DISCOVER, f"52:54:00:00:01:{i:02x}"))
        assert o.yiaddr not in taken
        taken.add(o.yiaddr)
    _, [again1] = rig.send(request(MsgType.DISCOVER, A))
    _, [again2] = rig.send(request(MsgType.DISCOVER, A, options=cid))
    assert (again1.yiaddr, again2.yiaddr) == (ack1.yiaddr, ack2.yiaddr)


def test_store_keeps_one_lease_per_key(tmp_path):
    """A key that moves loses its old address on disk; another key on the same MAC keeps its own."""
    store = Store(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        hw, cid = lease_key(None, A), lease_key("ff0001", A)
        store.leases.save([LeaseRecord(hw, "10.231.9.100", A, 100.0), LeaseRecord(cid, "10.231.9.101", A, 100.0, "ff0001")])
        store.leases.save([LeaseRecord(hw, "10.231.9.102", A, 200.0)])
        assert sorted((r.key, r.ip) for r in store.leases.load()) == sorted([(cid, "10.231.9.101"), (hw, "10.231.9.102")])
    finally:
        store.close()


# -- RFC 2131 §4.1: where replies go ---------------------------------------------
@pytest.mark.parametrize(
    "mt, fields, options, dest",
    [
        (MsgType.DISCOVER, {}, {}, ("10.231.9.100", 68, True)),  # unicast to a client without ARP
        (MsgType.DISCOVER, {"flags": FLAG_BROADCAST}, {}, ("255.255.255.255", 68, False)),
        (MsgType.DISCOVER, {"giaddr": "10.231.9.254", "hops": 1}, {}, ("10.231.9.254", 67, False)),
        (MsgType.REQUEST, {"ciaddr": "10.231.9.102"}, {}, ("10.231.9.102", 68, False)),
        (MsgType.REQUEST, {}, {Opt.REQUESTED_IP: "172.16.0.1"}, ("255.255.255.255", 68, False)),  # NAK
        (MsgType.REQUEST, {"giaddr": "10.231.9.254"}, {Opt.REQUESTED_IP: "172.16.0.1"}, ("10.231.9.254", 67, False)),
    ],
)
def test_reply_destination(rig, mt, fields, options, dest):
    res, _ = rig.send(request(mt, A, options=options, **fields))
    s = res.sends[0]
    assert (s.host, s.port, s.new_client) == dest and s.src_port == 67


def test_relayed_reply_keeps_giaddr_and_echoes_option_82(rig):
    agent = b"\x01\x04port\x02\x03sw1"
    res, [o] = rig.send(request(MsgType.DISCOVER, A, giaddr="10.231.9.254", options={Opt.RELAY_AGENT: agent}))
    assert o.giaddr == "10.231.9.254" and o.options[Opt.RELAY_AGENT] == agent
    res, [nak] = rig.send(request(MsgType.REQUEST, A, giaddr="10.231.9.254", options={Opt.REQUESTED_IP: "1.2.3.4"}))
    assert nak.broadcast_flag  # §4.3.2: the relay must broadcast a NAK


def test_relay_from_a_foreign_subnet_is_ignored(rig):
    res, sends = rig.send(request(MsgType.DISCOVER, A, giaddr="192.168.50.1"))
    assert sends == [] and res.outcome == "ignored"


@pytest.mark.parametrize(
    "data, kind, outcome",
    [
        (b"\x00" * 10, "malformed", "dropped"),
        (wire(request(MsgType.OFFER, A)), "offer", "ignored"),  # a client never sends OFFER
        (wire(request(MsgType.DISCOVER, A, op=2)), "discover", "ignored"),  # BOOTREPLY from another server
        (wire(request(MsgType.DISCOVER, A, hlen=8)), "discover", "ignored"),  # not Ethernet
    ],
)
def test_what_is_not_a_client_request_is_dropped(rig, data, kind, outcome):
    res, sends = rig.send(data)
    assert (res.kind, res.outcome, sends) == (kind, outcome, [])


def test_bootp_without_message_type_is_ignored(rig):
    p = request(MsgType.DISCOVER, A)
    del p.options[Opt.MESSAGE_TYPE]
    res, sends = rig.send(p)
    assert res.kind == "bootp" and sends == []


def test_unknown_nodes_ignore_means_no_answer_at_all(data_dir):
    r = Rig(data_dir, extra='[boot]\nunknown_nodes = "ignore"\n')
    try:
        res, sends = r.send(request(MsgType.DISCOVER, A, options=PXE_BIOS))
        assert sends == [] and res.outcome == "ignored"
        r.store.nodes.put(NodeSpec(mac=A, image="demo"))
        _, ack, _ = r.dora(A, PXE_BIOS)
        assert ack.yiaddr.startswith("10.231.9.")
    finally:
        r.close()


def test_range_excludes_server_and_network_addresses(data_dir):
    r = Rig(data_dir)
    r.config.dhcp.range = "10.231.9.0-10.231.9.2"  # .0 is the network, .1 the server
    try:
        r.server = r.make()
        _, [o] = r.send(request(MsgType.DISCOVER, A))
        assert o.yiaddr == "10.231.9.2"
        _, ack, _ = r.dora(B)  # the one address, A's offer taken back: never .0 or .1
        assert ack.yiaddr == "10.231.9.2"
        assert r.send(request(MsgType.DISCOVER, A))[1] == []  # bound to B: nothing left
    finally:
        r.close()


def test_full_mode_ignores_port_4011(rig):
    res, sends = rig.send(request(MsgType.REQUEST, A, ciaddr="10.231.9.100", options=PXE_BIOS), port=4011)
    assert sends == []



def test_an_operating_systems_own_dhcp_gets_an_address_and_nothing_to_boot(rig):
    """The initramfs's udhcpc or the booted OS: a lease, no boot program, recorded as "os"."""
    offer, ack, res = rig.dora(A, {Opt.VENDOR_CLASS: b"udhcp 1.35.0"})
    assert ack.yiaddr == offer.yiaddr
    for p in (offer, ack):
        assert Opt.BOOTFILE not in p.options and p.file in (b"", b"\x00" * 128) and Opt.VENDOR_CLASS not in p.options
    assert res.events[0].detail == {"ip": ack.yiaddr, "firmware": "os"}
    # a PXE ROM on the same machine still gets its loader
    _, pxe_ack, _ = rig.dora(A, {Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001", Opt.CLIENT_ARCH: b"\x00\x00"})
    assert pxe_ack.options[Opt.BOOTFILE] == b"undionly.kpxe"
