"""The Router Advertisement that ends iPXE's IPv6 wait says nothing a host would act on."""

from __future__ import annotations

import struct

from ramboot.server.ra_server import ICMPV6_RA, router_advertisement


def test_ra_is_bare_and_not_a_default_router() -> None:
    ra = router_advertisement(bytes.fromhex("525400123456"))
    typ, code, _csum, hop, flags, lifetime, reachable, retrans = struct.unpack_from("!BBHBBHII", ra)
    assert (typ, code) == (ICMPV6_RA, 0)
    assert flags == 0  # M and O clear: iPXE ends autoconfiguration here, no DHCPv6
    assert lifetime == 0  # never a default router
    assert (reachable, retrans) == (0, 0)
    assert hop == 64
    # only the source link-layer address option, no prefix information
    assert ra[16:] == bytes([1, 1]) + bytes.fromhex("525400123456")


def test_ra_without_mac_has_no_options() -> None:
    assert len(router_advertisement(None)) == 16


def test_answering_follows_the_mode_and_the_switch() -> None:
    import asyncio

    from ramboot.config import parse_config
    from ramboot.server.ra_server import start_ra

    async def started(text: str) -> bool:
        r = await start_ra(parse_config('[network]\ninterface = "lo"\n' + text))
        if r is None:
            return False
        await r.close()
        return True

    full = '[dhcp]\nmode = "full"\nrange = "10.0.0.10-10.0.0.20"\n'
    assert asyncio.run(started(full))
    assert asyncio.run(started('[dhcp]\nmode = "proxy"\n'))  # guarded: see test_proxy_mode_answers_*
    assert not asyncio.run(started('[dhcp]\nmode = "off"\n'))
    assert not asyncio.run(started('answer_router_solicitations = false\n[dhcp]\nmode = "proxy"\n'))
    assert asyncio.run(started('answer_router_solicitations = true\n[dhcp]\nmode = "proxy"\n'))
    assert not asyncio.run(started('answer_router_solicitations = false\n' + full))


PXE_MAC = "52:54:00:12:34:56"
PXE_LL = "fe80::5054:ff:fe12:3456"  # its EUI-64 link-local address


def _rs(mac: str | None) -> bytes:
    body = struct.pack("!BBHI", 133, 0, 0, 0)
    return body + (bytes([1, 1]) + bytes.fromhex(mac.replace(":", "")) if mac else b"")


def test_source_mac_from_the_option_or_the_eui64_link_local_address() -> None:
    from ramboot.server.ra_server import source_mac

    assert source_mac(_rs("02:00:00:00:00:01"), PXE_LL) == "02:00:00:00:00:01"  # the option wins
    assert source_mac(_rs(None), PXE_LL + "%rb0") == PXE_MAC
    assert source_mac(_rs(None), "fe80::1") is None  # not EUI-64
    assert source_mac(_rs(None), "::") is None
    assert source_mac(_rs(None) + bytes([1, 0, 0, 0]), PXE_LL) == PXE_MAC  # a zero-length option ends parsing
    ra = router_advertisement(bytes.fromhex("0a0000000001"))
    assert source_mac(ra, "fe80::1") == "0a:00:00:00:00:01"


def test_full_mode_answers_everyone_by_multicast() -> None:
    from ramboot.server.ra_server import ALL_NODES, RaGuard

    g = RaGuard(guarded=False)
    assert g.answer(None, "::", 0.0) == ALL_NODES
    g.advertisement("0a:00:00:00:00:09", 1.0)
    assert g.answer(PXE_MAC, PXE_LL, 2.0) == ALL_NODES


def test_proxy_mode_answers_only_its_pxe_clients_by_unicast() -> None:
    from ramboot.server.ra_server import PXE_RECENT, RaGuard

    g = RaGuard(guarded=True, own_mac="0a:00:00:00:00:01")
    assert g.answer(PXE_MAC, PXE_LL, 10.0) is None  # never asked us for PXE: a host of the site
    g.pxe_client(PXE_MAC, 10.0)
    assert g.answer(PXE_MAC, PXE_LL, 10.5) == PXE_LL  # unicast, to that machine only
    assert g.answer("52:54:00:00:00:99", "fe80::5054:ff:fe00:99", 10.5) is None
    assert g.answer(PXE_MAC, "::", 10.5) is None  # nowhere to unicast to
    assert g.answer(PXE_MAC, PXE_LL, 10.0 + PXE_RECENT) is None  # its boot is long over
    g.advertisement("0a:00:00:00:00:01", 11.0)  # our own RA looped back: not a router
    assert g.answer(PXE_MAC, PXE_LL, 11.5) == PXE_LL


def test_proxy_mode_stays_silent_while_a_real_router_advertises() -> None:
    from ramboot.server.ra_server import ROUTER_QUIET, RaGuard

    g = RaGuard(guarded=True, own_mac="0a:00:00:00:00:01")
    g.pxe_client(PXE_MAC, 100.0)
    g.advertisement("0a:00:00:00:00:02", 100.0)  # the site's router: its RA carries what the client needs
    assert g.answer(PXE_MAC, PXE_LL, 100.1) is None
    g.advertisement(None, 100.0 + ROUTER_QUIET)  # an RA without a link-layer option counts too
    assert g.answer(PXE_MAC, PXE_LL, 100.0 + ROUTER_QUIET) is None
    g.pxe_client(PXE_MAC, 100.0 + 2 * ROUTER_QUIET)
    assert g.answer(PXE_MAC, PXE_LL, 100.0 + 2 * ROUTER_QUIET) == PXE_LL  # the router has been gone an hour


def test_a_solicitation_just_before_the_discover_is_answered_when_the_discover_comes() -> None:
    from ramboot.server.ra_server import RS_PENDING, RaGuard

    g = RaGuard(guarded=True)
    assert g.answer(PXE_MAC, PXE_LL, 5.0) is None  # iPXE's first RS, before we saw its DISCOVER
    assert g.pxe_client(PXE_MAC, 5.01) == PXE_LL  # answered at once, not at its next RS
    assert g.pxe_client(PXE_MAC, 5.02) is None  # once
    assert g.answer("52:54:00:00:00:02", "fe80::5054:ff:fe00:2", 6.0) is None
    assert g.pxe_client("52:54:00:00:00:02", 6.0 + RS_PENDING) is None  # too long ago: its next RS is answered
    g.advertisement("0a:00:00:00:00:09", 7.0)
    assert g.answer("52:54:00:00:00:03", "fe80::5054:ff:fe00:3", 7.0) is None
    assert g.pxe_client("52:54:00:00:00:03", 7.1) is None  # a router is here: still silent


def test_a_pxe_stage_marks_the_mac() -> None:
    import time

    from ramboot.server.ra_server import RaGuard, RaServer

    class Rec:
        def __init__(self, stage: str) -> None:
            self.stage, self.mac = stage, PXE_MAC

    srv = RaServer.__new__(RaServer)
    srv.guard = RaGuard(guarded=True)
    srv.on_event(Rec("rootfs"))
    assert PXE_MAC not in srv.guard.pxe
    srv.on_event(Rec("proxy-offer"))
    assert srv.guard.answer(PXE_MAC, PXE_LL, time.monotonic()) == PXE_LL
