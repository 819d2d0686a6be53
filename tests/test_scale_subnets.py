"""Many subnets behind relays (RFC 2131 §4.3.1, RFC 1542 §4): the core serves each request
from the subnet its giaddr, its ciaddr or its arrival address names; table-driven."""

from __future__ import annotations

import ipaddress

import pytest

from dhcp_pkt import PXE_BIOS, Rig, request, wire
from ramboot.config import ConfigError, parse_config
from ramboot.inventory.store import NodeSpec
from ramboot.proto.dhcp_codec import MsgType, Opt, decode

SUBNETS = """
[[dhcp.subnet]]
range = "10.50.1.10-10.50.1.20"
router = "10.50.1.1"
dns = ["10.50.1.53"]
domain = "rack-a.example"
group = "rack-a"

[[dhcp.subnet]]
range = "10.50.2.10-10.50.2.20"
netmask = "255.255.255.128"
router = "10.50.2.1"
group = "rack-b"
"""
A = ("10.50.1.10", "10.50.1.20", "10.50.1.1", "255.255.255.0")
B = ("10.50.2.10", "10.50.2.20", "10.50.2.1", "255.255.255.128")
HOME = ("10.231.9.100", "10.231.9.104", None, "255.255.255.0")  # the one-range form (dhcp_pkt.RANGE)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path, extra=SUBNETS)
    yield r
    r.close()


@pytest.fixture
def only_subnets(tmp_path):
    """No one-range form: every subnet is a `[[dhcp.subnet]]`; the server's link has none."""
    r = Rig(tmp_path, extra=SUBNETS)
    r.config = parse_config(f'data_dir = "{tmp_path}"\n[dhcp]\nmode = "full"\n{SUBNETS}')
    r.server = r.make()
    yield r
    r.close()


def _in(ip: str, sub: tuple) -> bool:
    return int(ipaddress.IPv4Address(sub[0])) <= int(ipaddress.IPv4Address(ip)) <= int(ipaddress.IPv4Address(sub[1]))


@pytest.mark.parametrize(("giaddr", "sub"), [
    ("10.50.1.1", A),  # the relay on rack A's gateway
    ("10.50.1.200", A),  # any address of rack A's subnet names it
    ("10.50.2.1", B),
    ("10.231.9.254", HOME),  # a relay on the one-range form's subnet
])
def test_a_relayed_discover_is_offered_an_address_of_its_giaddrs_subnet(rig, giaddr, sub) -> None:
    res, offers = rig.send(request(MsgType.DISCOVER, "52:54:00:00:01:01", giaddr=giaddr, options=PXE_BIOS),
                           src=(giaddr, 67))
    assert res.outcome == "offer", res
    offer = offers[0]
    assert _in(offer.yiaddr, sub), offer.yiaddr
    assert offer.giaddr == giaddr
    assert (res.sends[0].host, res.sends[0].port) == (giaddr, 67)  # RFC 2131 §4.1: back to the relay's server port
    assert offer.options[Opt.SUBNET_MASK] == ipaddress.IPv4Address(sub[3]).packed
    if sub[2]:
        assert offer.options[Opt.ROUTER] == ipaddress.IPv4Address(sub[2]).packed
    else:
        assert Opt.ROUTER not in offer.options
    if sub is A:
        assert offer.options[Opt.DNS] == ipaddress.IPv4Address("10.50.1.53").packed
        assert offer.options[Opt.DOMAIN] == b"rack-a.example"
    else:
        assert Opt.DOMAIN not in offer.options  # one subnet's options never leak into another's


@pytest.mark.parametrize("giaddr", ["10.50.3.1", "10.50.2.200", "192.0.2.1"])
def test_a_relay_for_a_subnet_with_no_range_is_not_answered(rig, giaddr) -> None:
    # 10.50.2.200 is outside rack B's /25: its own subnet has no range here.
    res, offers = rig.send(request(MsgType.DISCOVER, "52:54:00:00:01:02", giaddr=giaddr, options=PXE_BIOS))
    assert (res.outcome, res.reason, offers) == ("ignored", "no-subnet", [])


def test_a_relayed_dora_binds_in_its_subnet_and_the_ack_goes_to_the_relay(rig) -> None:
    mac, gi = "52:54:00:00:01:03", "10.50.2.1"
    _, offers = rig.send(request(MsgType.DISCOVER, mac, giaddr=gi), src=(gi, 67))
    res, acks = rig.send(request(MsgType.REQUEST, mac, giaddr=gi, options={
        Opt.SERVER_ID: rig.server_ip, Opt.REQUESTED_IP: offers[0].yiaddr}), src=(gi, 67))
    assert res.outcome == "ack" and _in(acks[0].yiaddr, B)
    assert (res.sends[0].host, res.sends[0].port) == (gi, 67)
    assert [u.ip for u in res.upserts] == [acks[0].yiaddr]
    # RENEWING: the client unicasts from its address, with no relay: its ciaddr names the subnet.
    res, acks = rig.send(request(MsgType.REQUEST, mac, ciaddr=offers[0].yiaddr), src=(offers[0].yiaddr, 68))
    assert res.outcome == "ack" and acks[0].options[Opt.ROUTER] == ipaddress.IPv4Address("10.50.2.1").packed
    # The same client asking for its rack-B address through rack A's relay is refused it (moved racks).
    res, _ = rig.send(request(MsgType.REQUEST, mac, giaddr="10.50.1.1", options={
        Opt.REQUESTED_IP: offers[0].yiaddr}), src=("10.50.1.1", 67))
    assert res.outcome == "nak"


@pytest.mark.parametrize(("local", "sub"), [
    (None, HOME),  # arrived on the server's own link (its address is on the one-range subnet)
    ("10.50.1.2", A),  # arrived on an interface address in rack A (a second address on the link)
    ("10.50.2.2", B),
])
def test_a_direct_request_is_served_from_the_subnet_of_the_address_it_arrived_on(rig, local, sub) -> None:
    res = rig.server.handle(wire(request(MsgType.DISCOVER, "52:54:00:00:01:04")), ("0.0.0.0", 68), 67, rig.now, local)
    assert res.outcome == "offer"
    assert _in(decode(res.sends[0].data).yiaddr, sub)


def test_with_subnets_only_a_link_that_has_none_is_not_served(only_subnets) -> None:
    res, _ = only_subnets.send(request(MsgType.DISCOVER, "52:54:00:00:01:05"))  # arrives on 10.231.9.1
    assert (res.outcome, res.reason) == ("ignored", "no-subnet")
    res, offers = only_subnets.send(request(MsgType.DISCOVER, "52:54:00:00:01:05", giaddr="10.50.1.1"))
    assert res.outcome == "offer" and _in(offers[0].yiaddr, A)


@pytest.mark.parametrize(("giaddr", "gets_fixed"), [("10.50.1.1", True), ("10.50.2.1", False)])
def test_a_fixed_address_is_given_only_on_its_own_subnet(rig, giaddr, gets_fixed) -> None:
    mac = "52:54:00:00:01:06"
    rig.store.nodes.put(NodeSpec(mac=mac, image="demo", ip="10.50.1.77"))
    res, offers = rig.send(request(MsgType.DISCOVER, mac, giaddr=giaddr))
    assert res.outcome == "offer"
    if gets_fixed:
        assert offers[0].yiaddr == "10.50.1.77"
    else:  # asking from rack B: an address of rack B, never one that rack B's clients cannot route
        assert _in(offers[0].yiaddr, B)


def test_each_subnet_keeps_its_own_pool(rig) -> None:
    """Rack A's 11 addresses are all offered; the next rack-A client gets a rack-A address
    taken back from the oldest offer, never one of rack B's, and rack B still has its own."""
    seen = set()
    for i in range(11):
        res, offers = rig.send(request(MsgType.DISCOVER, f"52:54:00:00:02:{i:02x}", giaddr="10.50.1.1"))
        assert res.outcome == "offer" and _in(offers[0].yiaddr, A)
        seen.add(offers[0].yiaddr)
    assert len(seen) == 11
    res, offers = rig.send(request(MsgType.DISCOVER, "52:54:00:00:02:99", giaddr="10.50.1.1"))
    assert res.outcome == "offer" and offers[0].yiaddr == "10.50.1.10"  # the oldest offer, reclaimed
    res, offers = rig.send(request(MsgType.DISCOVER, "52:54:00:00:02:98", giaddr="10.50.2.1"))
    assert res.outcome == "offer" and offers[0].yiaddr == "10.50.2.10"


@pytest.mark.parametrize(("text", "message"), [
    ('[[dhcp.subnet]]\nrange = "10.50.1.10-10.50.1.20"\n[[dhcp.subnet]]\nrange = "10.50.1.100-10.50.1.120"',
     "overlaps"),
    ('[[dhcp.subnet]]\nrange = "10.50.1.10-10.50.1.200"\nnetmask = "255.255.255.128"', "leaves its subnet"),
    ('[[dhcp.subnet]]\nrange = "10.50.1.10"', "expected FIRST-LAST"),
    ('[[dhcp.subnet]]\nrange = "10.50.1.10-10.50.1.20"\ngroup = "a b"', "a group is"),
    ('[[dhcp.subnet]]\nrange = "10.50.1.10-10.50.1.20"\ngateway = "10.50.1.1"', "unknown key"),
    ('range = "10.231.9.10-10.231.9.20"\n[[dhcp.subnet]]\nrange = "10.231.9.100-10.231.9.120"', "overlaps"),
])
def test_a_bad_subnet_stops_with_one_line(text, message) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f'[dhcp]\nmode = "full"\n{text}', "c.toml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_group_of_an_address_is_its_subnets() -> None:
    c = parse_config(f'[dhcp]\nmode = "full"\nrange = "10.231.9.100-10.231.9.104"\ngroup = "home"\n{SUBNETS}')
    assert [c.dhcp.group_of(ip) for ip in ("10.50.1.99", "10.50.2.3", "10.50.2.200", "10.231.9.7", "junk")] == [
        "rack-a", "rack-b", None, "home", None]
