"""Builders for DHCP test packets and a core wired to a real Booter."""

from __future__ import annotations

from pathlib import Path

from ramboot.config import parse_config
from ramboot.inventory.store import Store
from ramboot.policy import Booter
from ramboot.proto.dhcp_codec import DhcpPacket, MsgType, Opt, decode, encode, socket_aton
from ramboot.proto.dhcp_core import DhcpCore
from ramboot.server.dhcp_server import dhcp_settings

SERVER = "10.231.9.1"
RANGE = "10.231.9.100-10.231.9.104"
GOLDEN = Path(__file__).parent / "golden" / "dhcp"

PXE_BIOS = {Opt.CLIENT_ARCH: b"\x00\x00", Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001"}
PXE_UEFI = {Opt.CLIENT_ARCH: b"\x00\x07", Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016"}
HTTP_UEFI = {Opt.CLIENT_ARCH: b"\x00\x10", Opt.VENDOR_CLASS: b"HTTPClient:Arch:00016:UNDI:003001"}
IPXE = {**PXE_BIOS, Opt.USER_CLASS: b"iPXE", Opt.IPXE_ENCAP: b"\xeb\x03\x01\x02\x00"}


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def request(mt: MsgType, mac: str = "52:54:00:00:00:01", xid: int = 0x1234, **fields) -> DhcpPacket:
    opts = {Opt.MESSAGE_TYPE: bytes((mt,))}
    for code, val in fields.pop("options", {}).items():
        opts[code] = socket_aton(val) if code in (Opt.REQUESTED_IP, Opt.SERVER_ID) else val
    return DhcpPacket(xid=xid, chaddr=mac_bytes(mac), options=opts, **fields)


def wire(pkt: DhcpPacket) -> bytes:
    return encode(pkt, 1500)


class Rig:
    """A `DhcpCore` over a real store and booter, plus a clock."""

    def __init__(self, data_dir: Path, mode: str = "full", extra: str = "", leases=(), server: str = SERVER,
                 range_: str = RANGE):
        rng = f'range = "{range_}"\n' if mode == "full" else ""
        if "[security]" not in extra:  # the pool tests fill tiny ranges with unregistered machines: no cap
            extra += "\n[security]\nmax_unknown_leases = 1000000\n"
        self.server_ip = server
        self.config = parse_config(f'data_dir = "{data_dir}"\n[dhcp]\nmode = "{mode}"\n{rng}lease_time = 600\n{extra}')
        self.store = Store.for_config(self.config)
        self.booter = Booter(self.config, self.store.directory, server)
        self.now = 1_000_000.0
        self.server = self.make(leases)

    def make(self, leases=()) -> DhcpCore:
        reserved = lambda: {n.ip: n.mac for n in self.store.nodes.all() if n.ip}  # noqa: E731
        return DhcpCore(dhcp_settings(self.config, self.server_ip), self.booter.decide, reserved, list(leases))

    def send(self, pkt: DhcpPacket | bytes, port: int = 67, src=("0.0.0.0", 68)):
        data = pkt if isinstance(pkt, bytes) else wire(pkt)
        res = self.server.handle(data, src, port, self.now)
        return res, [decode(s.data) for s in res.sends]

    def dora(self, mac: str = "52:54:00:00:00:01", options=None):
        options = dict(options or {})
        _, offers = self.send(request(MsgType.DISCOVER, mac, options=options))
        offer = offers[0]
        res, acks = self.send(request(MsgType.REQUEST, mac, options={
            **options, Opt.SERVER_ID: self.server_ip, Opt.REQUESTED_IP: offer.yiaddr}))
        return offer, acks[0], res

    def close(self) -> None:
        self.store.close()
