"""RFC 4578 / PXE 2.1 / proxyDHCP: the boot answer per firmware, and what iPXE needs to go on at once."""

from __future__ import annotations

import os

import pytest

from dhcp_pkt import GOLDEN, HTTP_UEFI, IPXE, PXE_BIOS, PXE_UEFI, SERVER, Rig, request
from ramboot.inventory.store import NodeSpec
from ramboot.macaddr import mac_hyphen
from ramboot.proto.dhcp_codec import IPXE_NO_PXEDHCP, MsgType, Opt, decode, decode_suboptions
from ramboot.proto.pxe import uuid_from_wire, uuid_to_wire

A = "52:54:00:00:00:01"
SCRIPT = f"http://{SERVER}/boot/52-54-00-00-00-01.ipxe"


@pytest.fixture
def rig(data_dir):
    r = Rig(data_dir)
    yield r
    r.close()


@pytest.fixture
def proxy(data_dir):
    r = Rig(data_dir, mode="proxy")
    yield r
    r.close()


FIRMWARES = [
    ("bios", PXE_BIOS, "undionly.kpxe", b"PXEClient"),
    ("uefi", PXE_UEFI, "snponly.efi", b"PXEClient"),
    ("uefi-http", HTTP_UEFI, f"http://{SERVER}/snponly.efi", b"HTTPClient"),
    ("ipxe", IPXE, SCRIPT, b"PXEClient"),
]


@pytest.mark.parametrize("name, options, bootfile, vendor", FIRMWARES, ids=[f[0] for f in FIRMWARES])
def test_offer_and_ack_carry_the_same_boot_answer(rig, name, options, bootfile, vendor):
    offer, ack, res = rig.dora(A, options)
    for p in (offer, ack):
        assert p.boot_file == bootfile
        assert p.options[Opt.BOOTFILE].decode() == bootfile
        assert p.siaddr == SERVER and p.options[Opt.TFTP_SERVER] == SERVER.encode()
        assert p.options[Opt.VENDOR_CLASS] == vendor
    assert res.events[0].detail == {"ip": ack.yiaddr, "bootfile": bootfile, "firmware": name}


def test_request_without_class_options_boots_what_was_offered(rig):
    _, [offer] = rig.send(request(MsgType.DISCOVER, A, options=PXE_UEFI))
    _, [ack] = rig.send(request(MsgType.REQUEST, A, options={Opt.SERVER_ID: SERVER, Opt.REQUESTED_IP: offer.yiaddr}))
    assert ack.boot_file == offer.boot_file == "snponly.efi"


def test_ipxe_is_told_to_skip_proxydhcp(rig):
    """iPXE leaves discovery at once if the offer says PXEClient (with siaddr and a file) or
    175.176 no_pxedhcp; either alone suffices, we send both (src/net/udp/dhcp.c)."""
    offer, ack, _ = rig.dora(A, IPXE)
    for p in (offer, ack):
        assert decode_suboptions(p.options[Opt.IPXE_ENCAP]) == {IPXE_NO_PXEDHCP: b"\x01"}
        assert p.options[Opt.VENDOR_CLASS][:9] == b"PXEClient" and p.server_id == SERVER
        assert p.siaddr != "0.0.0.0" and p.boot_file  # iPXE's dhcp_has_pxeopts(): no ProxyDHCPREQUEST
        assert Opt.VENDOR_SPECIFIC not in p.options  # a menu would send iPXE to boot server discovery


def test_pxe_rom_gets_discovery_control_use_bootfile(rig):
    offer, _, _ = rig.dora(A, PXE_BIOS)
    assert decode_suboptions(offer.options[Opt.VENDOR_SPECIFIC]) == {6: b"\x08"}
    assert Opt.IPXE_ENCAP not in offer.options


def test_plain_client_gets_no_pxe_vendor_options(rig):
    offer, _, _ = rig.dora(A)
    assert Opt.VENDOR_CLASS not in offer.options and Opt.VENDOR_SPECIFIC not in offer.options


def test_pxelinux_loader_for_bios(data_dir):
    r = Rig(data_dir, extra='[boot]\nloader = "pxelinux"\n')
    try:
        offer, ack, _ = r.dora(A, PXE_BIOS)
        assert offer.boot_file == ack.boot_file == "pxelinux.0"
    finally:
        r.close()


def test_long_http_url_goes_in_option_67_only(rig):
    rig.booter.config.http.port = 8080
    mac = "52:54:00:00:00:0a"
    offer, _, _ = rig.dora(mac, IPXE)
    assert offer.options[Opt.BOOTFILE] == b"http://10.231.9.1:8080/boot/52-54-00-00-00-0a.ipxe"


# -- proxy mode ---------------------------------------------------------------
@pytest.mark.parametrize("name, options, bootfile, vendor", FIRMWARES, ids=[f[0] for f in FIRMWARES])
def test_proxy_offer_on_67_never_gives_an_address(proxy, name, options, bootfile, vendor):
    uuid = {Opt.CLIENT_UUID: b"\x00" + bytes(range(16))}
    if name == "ipxe":  # the script's name carries the UUID, so the script request finds the same node
        bootfile = f"http://{SERVER}/boot/52-54-00-00-00-01/{uuid_from_wire(bytes(range(16)))}.ipxe"
    res, [o] = proxy.send(request(MsgType.DISCOVER, A, options={**options, **uuid}))
    assert o.msg_type == MsgType.OFFER and o.yiaddr == "0.0.0.0"
    assert Opt.LEASE_TIME not in o.options and Opt.SUBNET_MASK not in o.options
    assert o.server_id == SERVER and o.siaddr == SERVER and o.boot_file == bootfile
    assert o.options[Opt.VENDOR_CLASS] == vendor
    assert o.options[Opt.CLIENT_UUID] == uuid[Opt.CLIENT_UUID]  # PXE 2.1: echoed
    assert Opt.IPXE_ENCAP not in o.options  # no_pxedhcp would make iPXE drop this very offer
    assert (res.sends[0].host, res.sends[0].port, res.sends[0].src_port) == ("255.255.255.255", 68, 67)
    assert not res.needs_commit and res.events[0].stage == "proxy-offer"


def test_proxy_answers_requests_on_4011_to_the_sender(proxy):
    req = request(MsgType.REQUEST, A, ciaddr="10.231.9.150", options={**PXE_UEFI, Opt.SERVER_ID: SERVER})
    res, [ack] = proxy.send(req, port=4011, src=("10.231.9.150", 68))
    assert ack.msg_type == MsgType.ACK and ack.boot_file == "snponly.efi" and ack.yiaddr == "0.0.0.0"
    s = res.sends[0]
    assert (s.host, s.port, s.src_port) == ("10.231.9.150", 68, 4011)
    assert res.bound == ("10.231.9.150", A)  # so TFTP can name the client that fetches the loader


def test_proxy_sends_uefi_to_4011_and_lets_bios_boot_from_the_offer(proxy):
    """edk2 reads a proxy offer without PXE vendor options (43) as "BINL" and asks again on
    4011 (PxeBcRetryBinlOffer); a BIOS PXE ROM boots the offer's file ("use the boot file")."""
    _, [uefi] = proxy.send(request(MsgType.DISCOVER, A, options=PXE_UEFI))
    assert Opt.VENDOR_SPECIFIC not in uefi.options and uefi.options[Opt.VENDOR_CLASS] == b"PXEClient"
    assert uefi.siaddr == SERVER and uefi.server_id == SERVER  # where edk2 sends its 4011 REQUEST
    _, [bios] = proxy.send(request(MsgType.DISCOVER, "52:54:00:00:00:02", options=PXE_BIOS))
    assert Opt.VENDOR_SPECIFIC in bios.options
    req = request(MsgType.REQUEST, A, ciaddr="10.231.9.150", options={**PXE_UEFI, Opt.SERVER_ID: SERVER})
    _, [ack] = proxy.send(req, port=4011, src=("10.231.9.150", 68))
    assert ack.boot_file == "snponly.efi" and ack.options[Opt.BOOTFILE] == b"snponly.efi"  # edk2 needs one


@pytest.mark.parametrize(
    "mt, options, port",
    [
        (MsgType.DISCOVER, {}, 67),  # not a PXE client
        (MsgType.DISCOVER, {Opt.VENDOR_CLASS: b"MSFT 5.0"}, 67),
        (MsgType.REQUEST, PXE_BIOS, 67),  # the address belongs to the other server
        (MsgType.DISCOVER, PXE_BIOS, 4011),
        (MsgType.RELEASE, PXE_BIOS, 67),
    ],
)
def test_proxy_stays_silent(proxy, mt, options, port):
    res, sends = proxy.send(request(mt, A, options=options), port=port)
    assert sends == [] and not res.needs_commit


def test_proxy_respects_unknown_nodes_ignore(data_dir):
    r = Rig(data_dir, mode="proxy", extra='[boot]\nunknown_nodes = "ignore"\n')
    try:
        assert r.send(request(MsgType.DISCOVER, A, options=PXE_BIOS))[1] == []
    finally:
        r.close()


# -- golden: what real clients sent, answered by the core ------------------------
CAPTURE_SERVER = "10.231.7.1"  # where tests/golden/capture_dhcp.py ran its server
EXPECTED = {"bios": "undionly.kpxe", "uefi": "snponly.efi", "http": f"http://{CAPTURE_SERVER}/snponly.efi"}


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*-00-in-discover.hex")), ids=lambda p: p.stem)
def test_golden_client_exchange_gets_the_right_boot_file(data_dir, path):
    """Replay what udhcpc/dhclient really sent; OFFER and ACK name the same file."""
    rig = Rig(data_dir, server=CAPTURE_SERVER, range_="10.231.7.100-10.231.7.150")
    try:
        fw = path.name.split("-")[1]
        data = bytes.fromhex(path.read_text())
        mac = decode(data).mac
        want = EXPECTED.get(fw) or f"http://{CAPTURE_SERVER}/boot/{mac_hyphen(mac)}.ipxe"
        _, [offer] = rig.send(data)
        req = bytes.fromhex((path.parent / path.name.replace("00-in-discover", "02-in-request")).read_text())
        _, [ack] = rig.send(req)
        assert (offer.msg_type, ack.msg_type) == (MsgType.OFFER, MsgType.ACK)
        assert offer.boot_file == ack.boot_file == want
        assert ack.yiaddr == decode(req).requested_ip
    finally:
        rig.close()


# -- golden: QEMU's iPXE ROM, OVMF's own PXE and iPXE's snponly.efi, captured in the lab --
LAB_SERVER = "172.22.33.2"  # the lab's server, where these were captured with tcpdump on rb0
QEMU_GOLDEN = GOLDEN.parent / "dhcp-qemu"


@pytest.mark.parametrize(
    "stem, want_ipxe_script, want_file",
    [
        ("qemu-ipxe-rom-bios", True, None),  # SeaBIOS + QEMU's iPXE ROM: already iPXE
        ("ovmf-uefi-pxe", False, "snponly.efi"),  # OVMF's own PXE: arch 7, no client id
        ("ipxe-snponly-uefi", True, None),  # the iPXE that OVMF loaded: script, never itself again
    ],
)
def test_golden_firmware_exchange(data_dir, stem, want_ipxe_script, want_file):
    """Replay real firmware packets: the OFFER and ACK agree, the right program, one lease."""
    rig = Rig(data_dir, server=LAB_SERVER, range_="172.22.33.100-172.22.33.200")
    try:
        discover = bytes.fromhex((QEMU_GOLDEN / f"{stem}-00-discover.hex").read_text())
        req = bytes.fromhex((QEMU_GOLDEN / f"{stem}-02-request.hex").read_text())
        mac = decode(discover).mac
        want = f"http://{LAB_SERVER}/boot/{mac_hyphen(mac)}.ipxe" if want_ipxe_script else want_file
        _, [offer] = rig.send(discover)
        _, [ack] = rig.send(req)
        assert (offer.msg_type, ack.msg_type) == (MsgType.OFFER, MsgType.ACK)
        assert offer.boot_file == ack.boot_file == want
        assert ack.yiaddr == decode(req).requested_ip
        # iPXE proceeds at once: PXEClient echoed (no ProxyDHCP wait)
        assert offer.options.get(Opt.VENDOR_CLASS) == b"PXEClient"
    finally:
        rig.close()


def test_golden_ovmf_then_its_ipxe_keep_one_address(data_dir):
    """OVMF's PXE sends no client id; the iPXE it loads sends 01+MAC: same lease."""
    rig = Rig(data_dir, server=LAB_SERVER, range_="172.22.33.100-172.22.33.200")
    try:
        rig.send(bytes.fromhex((QEMU_GOLDEN / "ovmf-uefi-pxe-00-discover.hex").read_text()))
        _, [ack] = rig.send(bytes.fromhex((QEMU_GOLDEN / "ovmf-uefi-pxe-02-request.hex").read_text()))
        _, [offer] = rig.send(bytes.fromhex((QEMU_GOLDEN / "ipxe-snponly-uefi-00-discover.hex").read_text()))
        assert offer.yiaddr == ack.yiaddr
    finally:
        rig.close()


# -- golden replies: what the core answers now, byte for byte ---------------------
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate only when asked, as netboot's tests do
CAPTURE_ORDER = [(c, fw) for c in ("udhcpc", "dhclient") for fw in ("bios", "uefi", "http", "ipxe")]


def test_golden_replies_byte_for_byte(data_dir):
    """Replay every captured client packet in capture order into one core (as the capture's
    server saw them) and compare each OFFER and ACK with the captured reply, byte for byte.
    `UPDATE_GOLDEN=1` rewrites the reply files instead (review the diff)."""
    rig = Rig(data_dir, server=CAPTURE_SERVER, range_="10.231.7.100-10.231.7.150")
    compared, differ = 0, []
    try:
        for client, fw in CAPTURE_ORDER:
            files = sorted(GOLDEN.glob(f"{client}-{fw}-*.hex"))
            by_n = {int(f.name.split("-")[2]): f for f in files}
            for n, f in sorted(by_n.items()):
                if "-in-" not in f.name:
                    continue
                res = rig.server.handle(bytes.fromhex(f.read_text()), ("0.0.0.0", 68), 67, rig.now)
                reply = by_n.get(n + 1)
                if reply is None or "-out-" not in reply.name:
                    continue
                assert len(res.sends) == 1, f"{f.name}: no reply"
                got = res.sends[0].data
                if UPDATE_GOLDEN:
                    reply.write_text(got.hex() + "\n")
                elif got != bytes.fromhex(reply.read_text()):
                    differ.append(reply.name)
                compared += 1
    finally:
        rig.close()
    assert compared == 16
    assert differ == [], f"the core's replies changed: {differ} (UPDATE_GOLDEN=1 to accept, then review the diff)"


def test_a_node_found_by_uuid_stays_that_node_when_its_os_asks(data_dir):
    """The firmware sends option 97, the initramfs's udhcpc does not: with `unknown_nodes = "ignore"`
    the OS's own DHCP client must still get its address, also after a restart of the server."""
    rig = Rig(data_dir, extra='[boot]\nunknown_nodes = "ignore"\n')
    try:
        uuid = "6b1c3a52-7d1e-4c3b-9a55-2f1e0d9c8b7a"
        rig.store.nodes.put(NodeSpec(mac="52:54:00:99:99:99", image="demo", uuid=uuid))
        firmware = {**IPXE, Opt.CLIENT_UUID: b"\x00" + uuid_to_wire(uuid)}
        offer, ack, res = rig.dora(A, firmware)
        assert ack.boot_file == f"http://{SERVER}/boot/52-54-00-00-00-01/{uuid}.ipxe"
        rig.store.leases.save(res.upserts)
        os_offer, os_ack, _ = rig.dora(A)  # udhcpc in the initramfs: no option 97, no classes
        assert os_ack.yiaddr == ack.yiaddr
        rig.server = rig.make(rig.store.leases.load())  # a restart: the UUID comes back from the store
        _, [again] = rig.send(request(MsgType.DISCOVER, A))
        assert again.yiaddr == ack.yiaddr
        assert rig.send(request(MsgType.DISCOVER, "52:54:00:00:00:77"))[1] == []  # a stranger: still ignored
    finally:
        rig.close()
