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
    assert not asyncio.run(started('[dhcp]\nmode = "proxy"\n'))
    assert asyncio.run(started('answer_router_solicitations = true\n[dhcp]\nmode = "proxy"\n'))
    assert not asyncio.run(started('answer_router_solicitations = false\n' + full))
