"""The DHCP per-packet shortcuts (issue 14) give exactly what the long way gives.

- `dhcp_codec.encode` keeps the options part of a reply per distinct option set:
  the bytes must equal a fresh encoding, and a changed option must never reuse
  a stale part.
- The DHCP server's booter (`Booter.using(..., manifest_ttl)`) decides once per
  client per TTL and trusts a manifest for the TTL (its catalog's view); the
  kernel command line of its `Decision` equals the one a per-request booter makes.
"""

from __future__ import annotations

import time

from conftest import write_fake_image
from directory_fakes import FakeDirectory
from ramboot.config import parse_config
from ramboot.policy import Booter
from ramboot.proto import dhcp_codec
from ramboot.proto.dhcp_codec import DhcpPacket, MsgType, Opt, decode, encode
from ramboot.proto.pxe import Client

MAC = "52:54:00:12:34:56"


def _reply(xid: int, mac: bytes, **opts: bytes) -> DhcpPacket:
    o = {Opt.MESSAGE_TYPE: bytes((MsgType.OFFER,)), Opt.SERVER_ID: bytes([10, 0, 0, 1]),
         Opt.LEASE_TIME: b"\0\0\x0e\x10", **{int(k[1:]): v for k, v in opts.items()}}
    return DhcpPacket(op=2, xid=xid, chaddr=mac, yiaddr="10.0.0.9", options=o)


def _fresh(pkt: DhcpPacket, max_message: int | None = None) -> bytes:
    dhcp_codec._BODIES.clear()
    return encode(pkt, max_message)


def test_a_kept_options_part_gives_the_same_bytes_as_a_fresh_one() -> None:
    a = _reply(1, bytes.fromhex("525400000001"))
    b = _reply(2, bytes.fromhex("525400000002"))
    first = _fresh(a)
    assert encode(b) == _fresh(b)  # the second reuses the first's options part...
    assert encode(a) == first
    assert decode(encode(b)).xid == 2 and decode(encode(b)).mac == "52:54:00:00:00:02"  # ...with its own header


def test_a_changed_option_is_never_served_from_the_kept_part() -> None:
    p = _reply(1, bytes(6))
    before = encode(p)
    p.options[Opt.HOSTNAME] = b"node-7"
    after = encode(p)
    assert after != before and decode(after).options[Opt.HOSTNAME] == b"node-7"
    assert after == _fresh(p)
    p.options[Opt.HOSTNAME] = bytearray(b"node-8")  # unhashable: encoded afresh, not kept
    assert decode(encode(p)).options[Opt.HOSTNAME] == b"node-8"


def test_overloaded_replies_are_kept_per_message_size() -> None:
    long = {"o66": b"t" * 100, "o67": b"f" * 110, "o12": b"h" * 100}
    p = _reply(1, bytes(6), **long)
    small, big = encode(p, 576), encode(p, 1500)
    assert small != big and len(small) <= 576 - 28 < len(big)  # file/sname overloaded in the small one only
    assert decode(small).options == decode(big).options
    assert small == _fresh(p, 576) and big == _fresh(p, 1500)


def _booters(data_dir, ttl: float) -> tuple[Booter, Booter]:
    write_fake_image(data_dir, "demo")
    cfg = parse_config(f'data_dir = "{data_dir}"\n[boot]\ndefault_image = "demo"\n')
    plain = Booter(cfg, FakeDirectory(), "172.22.33.2")
    return plain, plain.using(FakeDirectory(), manifest_ttl=ttl)


def test_the_dhcp_booter_decides_once_per_client_per_ttl(data_dir) -> None:
    plain, dhcp = _booters(data_dir, ttl=60)
    c = Client(MAC, arch=0, vendor_class="PXEClient:Arch:00000")
    d1 = dhcp.decide(c)
    assert dhcp.decide(c) is d1  # the REQUEST gets the DISCOVER's decision
    assert dhcp.decide(Client("52:54:00:00:00:99", arch=0)) is not d1
    assert d1 is not None and d1.cmdline == plain.decide(c).cmdline  # the same line
    assert "ramboot.sha256=" in d1.cmdline
    dhcp._memo_at -= 61  # one TTL later: decided again
    assert dhcp.decide(c) is not d1 and dhcp.decide(c) == d1


def test_the_dhcp_booter_trusts_a_manifest_for_its_ttl_the_others_stat_it(data_dir) -> None:
    plain, dhcp = _booters(data_dir, ttl=60)
    sha = dhcp.catalog.manifest("demo").files["rootfs.squashfs"].sha256
    time.sleep(0.01)
    write_fake_image(data_dir, "demo", rootfs=b"another root")
    assert plain.catalog.manifest("demo").files["rootfs.squashfs"].sha256 != sha  # HTTP and TFTP see it at once
    assert dhcp.catalog.manifest("demo").files["rootfs.squashfs"].sha256 == sha  # DHCP within its TTL
    dhcp.catalog._checked["demo"] = (dhcp.catalog._checked["demo"][0] - 61, dhcp.catalog._checked["demo"][1])
    assert dhcp.catalog.manifest("demo").files["rootfs.squashfs"].sha256 != sha


def test_the_arrival_time_and_interface_come_from_the_control_messages() -> None:
    import socket
    import struct

    from ramboot.server.dhcp_server import IP_PKTINFO, SO_TIMESTAMP, ancillary

    pktinfo = (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("I4s4s", 7, socket.inet_aton("10.1.0.2"), bytes(4)))
    stamp = (socket.SOL_SOCKET, SO_TIMESTAMP, struct.pack("@qq", 1_700_000_000, 250_000))
    assert ancillary([pktinfo, stamp]) == (7, "10.1.0.2", 1_700_000_000.25)  # the local address picks the subnet
    assert ancillary([]) == (0, None, 0.0)  # a kernel that sent neither: nothing is dropped as stale


def test_a_request_that_waited_past_its_clients_retry_is_dropped_unanswered(monkeypatch) -> None:
    """A real socket: a DISCOVER queued while the server was busy for longer than
    STALE_AFTER is counted as stale and not answered; a fresh one is answered."""
    import asyncio
    import socket
    import time as _time

    from ramboot.server import dhcp_server

    monkeypatch.setattr(dhcp_server, "STALE_AFTER", 0.5)

    class Core:
        handled: list[bytes] = []

        def handle(self, data, src, port, now, local=None):
            self.handled.append(data)
            return dhcp_server.Result("discover", "ignored")

    async def run() -> list[bytes]:
        srv = dhcp_server.DhcpServer.__new__(dhcp_server.DhcpServer)
        srv.core, srv._counters, srv._pending, srv._anc = Core(), {}, [], {0: []}
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, dhcp_server.SO_TIMESTAMP, 1)
        rx.setblocking(False)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(b"old", rx.getsockname())
        _time.sleep(1.0)  # the server is busy elsewhere for longer than STALE_AFTER
        tx.sendto(b"new", rx.getsockname())
        srv._readable(rx, 67)
        rx.close()
        tx.close()
        return Core.handled

    handled = asyncio.run(run())
    assert handled == [b"new"], handled
