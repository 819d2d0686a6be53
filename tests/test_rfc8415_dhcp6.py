"""RFC 8415 (DHCPv6) against the sans-IO core: messages, IA_NA, rapid commit, DUIDs, relays.

The core is driven with the real policy (`Booter` over an in-memory directory)
and answers are decoded with the codec; golden replies are compared byte for
byte (`UPDATE_GOLDEN=1` rewrites them, as for IPv4).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from directory_fakes import FakeDirectory
from ramboot.config import parse_config
from ramboot.inventory.records import NodeSpec
from ramboot.policy import Booter
from ramboot.proto.dhcp6_codec import (
    ENTERPRISE_UEFI,
    Dhcp6DecodeError,
    IaAddr,
    IaNa,
    Message,
    Msg,
    Opt,
    RelayMessage,
    Status,
    class_data,
    decode,
    decode_ia_na,
    decode_iaaddr,
    duid_mac,
    duid_uuid,
    encode,
    encode_ia_na,
    encode_iaaddr,
    encode_vendor_class,
    eui64_mac,
    vendor_class,
)
from ramboot.proto.dhcp6_core import Dhcp6Core, Dhcp6Settings, Lease6Record, server_duid

SERVER6 = "fd00:172:22:33::2"
MAC = "52:54:00:12:34:56"
LINK_LOCAL = "fe80::5054:ff:fe12:3456"  # MAC's modified EUI-64
DUID_LL = struct.pack("!HH", 3, 1) + bytes.fromhex(MAC.replace(":", ""))
DUID_LLT = struct.pack("!HHI", 1, 1, 0x2a2b2c2d) + bytes.fromhex("020000aabbcc")
DUID_EN = struct.pack("!HI", 2, 343) + b"\x01\x02\x03\x04"
UUID = "6b1c3a52-7d1e-4c3b-9a55-2f1e0d9c8b7a"
DUID_UUID = struct.pack("!H", 4) + bytes.fromhex(UUID.replace("-", ""))
GOLDEN = Path(__file__).parent / "golden" / "dhcp6"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


def make_core(tmp_path: Path, *nodes: NodeSpec, extra: str = "", lease_time: int = 3600,
              last: str = "fd00:172:22:33::1ff") -> Dhcp6Core:
    cfg = parse_config(f'data_dir = "{tmp_path}"\n{extra}')
    booter = Booter(cfg, FakeDirectory(*nodes), SERVER6)
    settings = Dhcp6Settings(server_ip=SERVER6, server_duid=server_duid(bytes.fromhex("02aabbccddee")),
                             range_first="fd00:172:22:33::100", range_last=last,
                             prefix="fd00:172:22:33::/64", lease_time=lease_time, dns=(SERVER6,))
    return Dhcp6Core(settings, booter.decide)


def ia(iaid: int = 1, *addrs: str) -> tuple[int, bytes]:
    return Opt.IA_NA, encode_ia_na(IaNa(iaid, 0, 0, [(Opt.IAADDR, encode_iaaddr(IaAddr(a, 0, 0))) for a in addrs]))


PXE = [(Opt.CLIENT_ARCH_TYPE, struct.pack("!H", 7)),
       (Opt.VENDOR_CLASS, encode_vendor_class(ENTERPRISE_UEFI, b"PXEClient:Arch:00007:UNDI:003016"))]
HTTP = [(Opt.CLIENT_ARCH_TYPE, struct.pack("!H", 16)),
        (Opt.VENDOR_CLASS, encode_vendor_class(ENTERPRISE_UEFI, b"HTTPClient:Arch:00016:UNDI:003001"))]
IPXE = [(Opt.USER_CLASS, struct.pack("!H", 4) + b"iPXE")]


def msg(mt: Msg, *opts: tuple[int, bytes], duid: bytes = DUID_LL, txid: int = 0x123456) -> bytes:
    return encode(Message(mt, txid, [(Opt.CLIENTID, duid), *opts]))


def answer(core: Dhcp6Core, data: bytes, src: str = LINK_LOCAL, port: int = 546, now: float = 1000.0):
    res = core.handle(data, (src, port), now)
    replies = [decode(s.data) for s in res.sends]
    return res, replies


def addresses(m: Message) -> list[IaAddr]:
    return [a for raw in m.all(Opt.IA_NA) for a in decode_ia_na(raw).addresses()]


def sarr(core: Dhcp6Core, *extra: tuple[int, bytes], duid: bytes = DUID_LL, src: str = LINK_LOCAL):
    _, [adv] = answer(core, msg(Msg.SOLICIT, ia(), *extra, duid=duid), src)
    res, [rep] = answer(core, msg(Msg.REQUEST, ia(), (Opt.SERVERID, core.duid), *extra, duid=duid), src)
    return adv, rep, res


# -- codec ---------------------------------------------------------------------------


@given(st.integers(1, 11), st.integers(0, 0xFFFFFF),
       st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=64)), max_size=8))
def test_rfc8415_s8_message_round_trip(mt, txid, options):
    m = Message(mt, txid, options)
    assert decode(encode(m)) == m


@given(st.integers(0, 255), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.binary(max_size=200))
def test_rfc8415_s9_relay_round_trip(hops, link, peer, inner):
    import ipaddress
    r = RelayMessage(Msg.RELAY_FORW, hops, str(ipaddress.IPv6Address(link)), str(ipaddress.IPv6Address(peer)),
                     [(Opt.RELAY_MSG, inner)])
    assert decode(encode(r)) == r


@given(st.binary(max_size=300))
def test_rfc8415_hostile_bytes_never_raise_anything_but_a_decode_error(data):
    try:
        decode(data)
    except Dhcp6DecodeError as e:
        assert e.reason


@given(st.binary(max_size=300))
def test_rfc8415_hostile_datagrams_never_break_the_core(tmp_path_factory, data):
    core = make_core(tmp_path_factory.mktemp("d"))
    res = core.handle(data, (LINK_LOCAL, 546), 1.0)
    assert res.kind


@pytest.mark.parametrize("duid, mac, uuid", [
    (DUID_LL, MAC, None),
    (DUID_LLT, "02:00:00:aa:bb:cc", None),
    (DUID_EN, None, None),
    (DUID_UUID, None, UUID),
    (struct.pack("!H", 4) + bytes(16), None, None),  # a null UUID is no identity
    (b"\x00\x03\x00\x01\x01", None, None),  # truncated DUID-LL
])
def test_rfc8415_s11_duids(duid, mac, uuid):
    assert duid_mac(duid) == mac
    assert duid_uuid(duid) == uuid


@pytest.mark.parametrize("addr, mac", [
    (LINK_LOCAL, MAC),
    ("fe80::1", None),  # not EUI-64
    ("fd00::5054:ff:fe12:3456", None),  # not link-local
    ("garbage", None),
])
def test_rfc4291_eui64_link_local(addr, mac):
    assert eui64_mac(addr) == mac


def test_rfc8415_s21_ia_na_and_iaaddr_round_trip():
    a = IaAddr("fd00::5", 100, 200)
    assert decode_iaaddr(encode_iaaddr(a)) == a
    i = IaNa(7, 10, 20, [(Opt.IAADDR, encode_iaaddr(a))])
    assert decode_ia_na(encode_ia_na(i)).addresses() == [a]
    with pytest.raises(Dhcp6DecodeError):
        decode_ia_na(b"\x00" * 11)


def test_rfc8415_s21_16_vendor_class():
    assert vendor_class(encode_vendor_class(343, b"PXEClient", b"x")) == (343, [b"PXEClient", b"x"])
    assert class_data(b"\x00\x09PXE") == []  # a truncated item is no item


# -- the exchanges ---------------------------------------------------------------------


def test_rfc8415_s18_solicit_advertise_request_reply(tmp_path):
    core = make_core(tmp_path)
    adv, rep, res = sarr(core)
    assert adv.msg_type == Msg.ADVERTISE and rep.msg_type == Msg.REPLY
    assert adv.txid == rep.txid == 0x123456
    assert adv.get(Opt.SERVERID) == core.duid and adv.get(Opt.CLIENTID) == DUID_LL
    assert adv.get(Opt.PREFERENCE) == b"\xff"  # the client requests at once (§18.2.1)
    [a] = addresses(adv)
    [b] = addresses(rep)
    assert a.addr == b.addr == "fd00:172:22:33::100"
    assert b.valid == 3600
    assert res.upserts == [Lease6Record(f"{DUID_LL.hex()}/1", b.addr, MAC, 1000.0 + 3600),
                           # RFC 4862: the address its OS takes by SLAAC, recorded with the lease
                           Lease6Record(f"slaac:{MAC}", "fd00:172:22:33:5054:ff:fe12:3456", MAC, 1000.0 + 3600)]
    assert res.bound == (b.addr, MAC)
    assert [e.stage for e in res.events] == ["dhcp-ack"]
    # an operating system's client gets no boot program
    assert rep.get(Opt.BOOTFILE_URL) is None


def test_rfc8415_s18_3_1_request_for_another_server_is_ignored(tmp_path):
    core = make_core(tmp_path)
    res, replies = answer(core, msg(Msg.REQUEST, ia(), (Opt.SERVERID, b"\x00\x03\x00\x01" + bytes(6))))
    assert (res.outcome, replies, res.upserts) == ("other-server", [], [])


@pytest.mark.parametrize("mt", [Msg.SOLICIT, Msg.CONFIRM, Msg.REBIND])
def test_rfc8415_s16_messages_that_must_not_name_a_server(tmp_path, mt):
    core = make_core(tmp_path)
    res, replies = answer(core, msg(mt, ia(), (Opt.SERVERID, core.duid)))
    assert replies == [] and res.reason == "server-id-present"


def test_rfc8415_s16_no_client_id_no_answer(tmp_path):
    core = make_core(tmp_path)
    res, replies = answer(core, encode(Message(Msg.SOLICIT, 1, [ia()])))
    assert replies == [] and res.reason == "no-client-id"


def test_rfc8415_s18_3_1_rapid_commit(tmp_path):
    core = make_core(tmp_path)
    res, [rep] = answer(core, msg(Msg.SOLICIT, ia(), (Opt.RAPID_COMMIT, b"")))
    assert rep.msg_type == Msg.REPLY and rep.get(Opt.RAPID_COMMIT) == b""
    assert [u.key for u in res.upserts] == [f"{DUID_LL.hex()}/1", f"slaac:{MAC}"] and res.bound is not None


def test_rfc8415_s18_3_4_renew_and_rebind_extend_the_lease(tmp_path):
    core = make_core(tmp_path)
    _, rep, _ = sarr(core)
    [a] = addresses(rep)
    res, [ren] = answer(core, msg(Msg.RENEW, ia(1, a.addr), (Opt.SERVERID, core.duid)), now=2000.0)
    assert [x.addr for x in addresses(ren)] == [a.addr] and res.upserts[0].expires == 2000.0 + 3600
    res, [reb] = answer(core, msg(Msg.REBIND, ia(1, a.addr)), now=3000.0)
    assert [x.addr for x in addresses(reb)] == [a.addr] and res.upserts[0].expires == 3000.0 + 3600


def test_rfc8415_s18_3_4_renew_without_binding_is_no_binding(tmp_path):
    core = make_core(tmp_path)
    res, [rep] = answer(core, msg(Msg.RENEW, ia(9, "fd00:172:22:33::150"), (Opt.SERVERID, core.duid)))
    [raw] = rep.all(Opt.IA_NA)
    st_ = decode_ia_na(raw).options
    assert (Opt.STATUS_CODE, struct.pack("!H", Status.NO_BINDING)) in st_
    assert res.upserts == []


def test_rfc8415_s18_3_2_an_address_the_client_may_not_have_gets_lifetime_zero(tmp_path):
    core = make_core(tmp_path)
    _, [adv] = answer(core, msg(Msg.SOLICIT, ia(1, "2001:db8::1")))
    got = {a.addr: a.valid for a in addresses(adv)}
    assert got == {"fd00:172:22:33::100": 3600, "2001:db8::1": 0}


def test_rfc8415_two_clients_two_addresses_and_iaids_are_separate_leases(tmp_path):
    core = make_core(tmp_path)
    other = struct.pack("!HH", 3, 1) + bytes.fromhex("525400000002")
    _, r1, _ = sarr(core)
    _, r2, _ = sarr(core, duid=other, src="fe80::5054:ff:fe00:2")
    _, [r3] = answer(core, msg(Msg.REQUEST, ia(2), (Opt.SERVERID, core.duid)))
    got = [addresses(r)[0].addr for r in (r1, r2, r3)]
    assert len(set(got)) == 3


def _duid(n: int) -> tuple[bytes, str]:
    mac = f"5254000000{n:02x}"
    return struct.pack("!HH", 3, 1) + bytes.fromhex(mac), f"fe80::5054:ff:fe00:{n:x}"


def test_rfc8415_s18_3_7_release_frees_and_s18_3_8_decline_quarantines(tmp_path):
    """A two-address range: a released address is handed out again, a declined one is not."""
    core = make_core(tmp_path, last="fd00:172:22:33::101")
    _, rep, _ = sarr(core)
    [a] = addresses(rep)
    res, [r] = answer(core, msg(Msg.RELEASE, ia(1, a.addr), (Opt.SERVERID, core.duid)))
    assert res.deletes == [a.addr] and r.get(Opt.STATUS_CODE) == struct.pack("!H", Status.SUCCESS)
    b_duid, b_src = _duid(0x11)
    _, rep, _ = sarr(core, duid=b_duid, src=b_src)
    c_duid, c_src = _duid(0x12)
    _, rep, _ = sarr(core, duid=c_duid, src=c_src)
    assert addresses(rep)[0].addr == a.addr  # free again
    res, _ = answer(core, msg(Msg.DECLINE, ia(1, a.addr), (Opt.SERVERID, core.duid), duid=c_duid), c_src)
    assert res.deletes == [a.addr]
    d_duid, d_src = _duid(0x13)
    _, rep, res = sarr(core, duid=d_duid, src=d_src)
    assert addresses(rep) == [] and res.upserts == []  # declined: out of the pool


def test_rfc8415_release_by_another_client_frees_nothing(tmp_path):
    core = make_core(tmp_path)
    _, rep, _ = sarr(core)
    [a] = addresses(rep)
    forged = struct.pack("!HH", 3, 1) + bytes.fromhex("525400000009")
    res, _ = answer(core, msg(Msg.RELEASE, ia(1, a.addr), (Opt.SERVERID, core.duid), duid=forged))
    assert res.deletes == []


@pytest.mark.parametrize("addr, code", [("fd00:172:22:33::100", Status.SUCCESS),
                                        ("2001:db8::1", Status.NOT_ON_LINK)])
def test_rfc8415_s18_3_3_confirm(tmp_path, addr, code):
    core = make_core(tmp_path)
    _, [rep] = answer(core, msg(Msg.CONFIRM, ia(1, addr)))
    assert rep.get(Opt.STATUS_CODE) == struct.pack("!H", code)
    res, replies = answer(core, msg(Msg.CONFIRM, ia(1)))
    assert replies == []  # no addresses: no reply


def test_rfc8415_s18_3_6_information_request(tmp_path):
    core = make_core(tmp_path)
    res, [rep] = answer(core, encode(Message(Msg.INFORMATION_REQUEST, 5, [*IPXE])))
    assert rep.msg_type == Msg.REPLY and rep.all(Opt.IA_NA) == [] and res.upserts == []
    assert rep.get(Opt.DNS_SERVERS) is not None
    assert rep.get(Opt.BOOTFILE_URL) == f"http://[{SERVER6}]/boot/52-54-00-12-34-56.ipxe".encode()


def test_rfc8415_a_client_with_no_mac_anywhere_is_not_answered(tmp_path):
    core = make_core(tmp_path)
    res, replies = answer(core, msg(Msg.SOLICIT, ia(), duid=DUID_EN), src="fe80::1")
    assert replies == [] and res.reason == "no-mac"


def test_rfc8415_the_link_local_source_names_the_nic_before_the_duid(tmp_path):
    """One DUID per machine (§11): dhclient's DUID-LLT may name another NIC; the source is the one asking."""
    core = make_core(tmp_path)
    _, rep, res = sarr(core, duid=DUID_LLT)
    assert res.bound is not None and res.bound[1] == MAC


def test_rfc6355_duid_uuid_finds_the_node_by_uuid(tmp_path):
    core = make_core(tmp_path, NodeSpec(mac="52:54:00:99:99:99", image="demo", uuid=UUID),
                     extra='[boot]\nunknown_nodes = "ignore"\n')
    _, [adv] = answer(core, msg(Msg.SOLICIT, ia(), *IPXE, duid=DUID_UUID))
    assert adv.get(Opt.BOOTFILE_URL) == f"http://[{SERVER6}]/boot/52-54-00-12-34-56/{UUID}.ipxe".encode()


def test_rfc8415_unknown_nodes_ignore_is_honoured(tmp_path):
    core = make_core(tmp_path, extra='[boot]\nunknown_nodes = "ignore"\n')
    res, replies = answer(core, msg(Msg.SOLICIT, ia()))
    assert replies == []


# -- relays (RFC 8415 §19, RFC 6939) ------------------------------------------------------


def relayed(inner: bytes, *, opts=(), link="fd00:172:22:33::1", peer="fe80::1", hops=0) -> bytes:
    return encode(RelayMessage(Msg.RELAY_FORW, hops, link, peer, [*opts, (Opt.RELAY_MSG, inner)]))


def test_rfc8415_s19_relayed_solicit_is_answered_through_the_relay(tmp_path):
    core = make_core(tmp_path)
    iid = (Opt.INTERFACE_ID, b"eth7")
    ll = (Opt.CLIENT_LINKLAYER_ADDR, struct.pack("!H", 1) + bytes.fromhex("525400abcdef"))
    res, [repl] = answer(core, relayed(msg(Msg.SOLICIT, ia(), duid=DUID_EN), opts=(iid, ll)),
                         src="fd00:172:22:33::1", port=547)
    assert res.sends[0].host == "fd00:172:22:33::1" and res.sends[0].port == 547
    assert isinstance(repl, RelayMessage) and repl.msg_type == Msg.RELAY_REPL
    assert repl.get(Opt.INTERFACE_ID) == b"eth7" and repl.peer_address == "fe80::1"
    inner = decode(repl.get(Opt.RELAY_MSG) or b"")
    assert isinstance(inner, Message) and inner.msg_type == Msg.ADVERTISE
    assert res.events[0].mac == "52:54:00:ab:cd:ef"  # RFC 6939: the relay names the MAC


def test_rfc8415_s19_two_relays_nest_back(tmp_path):
    core = make_core(tmp_path)
    first = relayed(msg(Msg.SOLICIT, ia()), peer=LINK_LOCAL, link="fd00:172:22:33::1")
    res, [outer] = answer(core, relayed(first, link="::", peer="fd00:99::1", hops=1), src="fd00:99::1", port=547)
    assert isinstance(outer, RelayMessage) and outer.hop_count == 1
    mid = decode(outer.get(Opt.RELAY_MSG) or b"")
    assert isinstance(mid, RelayMessage) and mid.peer_address == LINK_LOCAL
    assert res.events[0].mac == MAC  # the innermost relay's EUI-64 peer


def test_rfc8415_s19_a_relay_for_a_link_we_do_not_serve_is_ignored(tmp_path):
    core = make_core(tmp_path)
    res, replies = answer(core, relayed(msg(Msg.SOLICIT, ia()), link="2001:db8::1", peer=LINK_LOCAL),
                          src="2001:db8::1", port=547)
    assert replies == [] and res.reason == "foreign-link"


def test_rfc8415_s19_relay_loops_are_bounded(tmp_path):
    core = make_core(tmp_path)
    data = msg(Msg.SOLICIT, ia())
    for _ in range(12):
        data = relayed(data)
    res, replies = answer(core, data, src="fd00:172:22:33::1", port=547)
    assert replies == [] and res.reason == "relay-depth"


# -- leases survive a restart, one lease rule -------------------------------------------


def test_rfc8415_a_restarted_core_keeps_the_clients_address(tmp_path):
    core = make_core(tmp_path)
    _, rep, res = sarr(core)
    again = Dhcp6Core(core.settings, core.decide, leases=res.upserts)
    _, rep2, _ = sarr(again)
    assert addresses(rep)[0].addr == addresses(rep2)[0].addr
    other = struct.pack("!HH", 3, 1) + bytes.fromhex("525400000004")
    _, rep3, _ = sarr(again, duid=other, src="fe80::5054:ff:fe00:4")
    assert addresses(rep3)[0].addr != addresses(rep)[0].addr


def test_rfc8415_a_full_range_says_no_addrs_avail(tmp_path):
    cfg = parse_config(f'data_dir = "{tmp_path}"\n')
    booter = Booter(cfg, FakeDirectory(), SERVER6)
    core = Dhcp6Core(Dhcp6Settings(SERVER6, b"\x00\x03\x00\x01" + bytes(6), "fd00::10", "fd00::10",
                                   "fd00::/64"), booter.decide)
    sarr(core)
    other = struct.pack("!HH", 3, 1) + bytes.fromhex("525400000005")
    _, rep, res = sarr(core, duid=other, src="fe80::5054:ff:fe00:5")
    [raw] = rep.all(Opt.IA_NA)
    assert (Opt.STATUS_CODE, struct.pack("!H", Status.NO_ADDRS_AVAIL)) in decode_ia_na(raw).options
    assert res.upserts == []


# -- golden replies, byte for byte ---------------------------------------------------------


GOLDEN_CASES = {
    "ovmf-pxe": PXE,
    "ovmf-http": HTTP,
    "ipxe": IPXE,
    "os": [],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_rfc8415_golden_replies_byte_for_byte(tmp_path, name):
    """Solicit, Advertise, Request, Reply for each kind of client; `UPDATE_GOLDEN=1` rewrites them."""
    core = make_core(tmp_path)
    extra = GOLDEN_CASES[name]
    adv, rep, _ = sarr(core, *extra, duid=DUID_UUID if name == "ipxe" else DUID_LL)
    for stem, m in (("advertise", adv), ("reply", rep)):
        f = GOLDEN / f"{name}-{stem}.hex"
        got = encode(m).hex() + "\n"
        if UPDATE_GOLDEN:
            f.write_text(got)
        assert f.read_text() == got, f"{f.name} changed (UPDATE_GOLDEN=1 to accept, then review the diff)"


def test_rfc8415_leases_are_durable_in_the_store_one_per_key(tmp_path):
    """A burst commits in one batch: two clients behind one MAC (perfdhcp's many DUIDs from one NIC)
    name the same SLAAC record twice; the store keeps one row per key and per address."""
    from ramboot.inventory.store import Store

    core = make_core(tmp_path)
    batch = []
    for n in (1, 2):
        duid = struct.pack("!HHI", 1, 1, 7) + bytes([2, 0, 0, 0, 0, n])
        _, _, res = sarr(core, duid=duid)
        batch += res.upserts
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        store.leases.save6(batch)
        rows = {r.key: r.ip for r in store.leases.load6()}
        assert len(rows) == 3 and f"slaac:{MAC}" in rows  # two leases and one SLAAC record
        assert [x.ip for x in store.leases.leases_of(MAC, now=1000.0)].count("fd00:172:22:33:5054:ff:fe12:3456") == 1
        store.leases.save6([], ["fd00:172:22:33::100"])
        assert len(store.leases.load6()) == 2
    finally:
        store.close()
