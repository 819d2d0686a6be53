"""The DHCP load client: every simulated PXE ROM and iPXE shares one socket on port 68."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct

from ramboot.proto import dhcp_codec as D

from .common import ClientResult, Failed, GaveUp

SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
PXE_VENDOR = b"PXEClient:Arch:00000:UNDI:002001"
PARAM_REQUEST = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60,
                       66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135, 175])
# PXE 2.1 DHCP timeouts (seconds before the next DISCOVER), then give up
DHCP_TIMEOUTS = (4, 8, 16, 32)
REQUEST_TIMEOUTS = (4, 4)  # then DISCOVER again


class DhcpMux:
    """One UDP socket on port 68 shared by every client; replies go to their xid."""

    def __init__(self, ifname: str):
        self.loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            except OSError:
                pass
        s.bind(("0.0.0.0", 68))
        s.setblocking(False)
        self.sock = s
        self.waiters: dict[int, tuple[bytes, set[int], asyncio.Future[D.DhcpPacket]]] = {}
        self.loop.add_reader(s.fileno(), self._readable)
        self.stray = 0

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        for _ in range(256):
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            try:
                pkt = D.decode(data)
            except D.DhcpDecodeError:
                self.stray += 1
                continue
            w = self.waiters.get(pkt.xid)
            if w is None or pkt.op != D.BOOTREPLY or pkt.chaddr[:6] != w[0] or pkt.msg_type not in w[1] or w[2].done():
                self.stray += 1
                continue
            w[2].set_result(pkt)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, ("255.255.255.255", 67))
        except (BlockingIOError, InterruptedError):
            pass  # the retransmission timer covers it, as on a real wire

    async def exchange(
        self, mac: bytes, xid: int, data: bytes, want: set[int], res: ClientResult,
        timeouts: tuple[int, ...] = DHCP_TIMEOUTS,
    ) -> D.DhcpPacket:
        fut: asyncio.Future[D.DhcpPacket] = self.loop.create_future()
        self.waiters[xid] = (mac, want, fut)
        try:
            for i, t in enumerate(timeouts):
                if i:
                    res.dhcp_retries += 1
                self._send(data)
                try:
                    # RFC 2131 4.1: each wait randomised by -1..+1 s, so a storm's retries do not stay in step
                    return await asyncio.wait_for(asyncio.shield(fut), t + random.uniform(-1, 1))
                except TimeoutError:
                    continue
            raise GaveUp(f"dhcp: no reply to message type {data[242] if len(data) > 242 else '?'}"
                         f" after {sum(timeouts)} s")
        finally:
            self.waiters.pop(xid, None)

    def packet(self, mac: bytes, xid: int, msg: int, ipxe: bool, extra: dict[int, bytes] | None = None) -> bytes:
        opts: dict[int, bytes] = {
            D.Opt.MESSAGE_TYPE: bytes([msg]),
            D.Opt.MAX_MESSAGE_SIZE: struct.pack("!H", 1472),
            D.Opt.PARAM_REQUEST: PARAM_REQUEST,
            D.Opt.VENDOR_CLASS: PXE_VENDOR,
            D.Opt.CLIENT_ARCH: b"\x00\x00",
            D.Opt.CLIENT_NDI: b"\x01\x02\x01",
            D.Opt.CLIENT_UUID: b"\x00" + hashlib.md5(mac).digest(),
        }
        if ipxe:
            opts[D.Opt.USER_CLASS] = b"iPXE"
            opts[D.Opt.IPXE_ENCAP] = bytes([1, 1, 1, 19, 1, 1])  # priority, http feature
        if extra:
            opts.update(extra)
        pkt = D.DhcpPacket(op=D.BOOTREQUEST, xid=xid, flags=D.FLAG_BROADCAST, chaddr=mac, options=opts)
        return D.encode(pkt, max_message=1472)

    async def dora(self, mac: bytes, ipxe: bool, res: ClientResult) -> D.DhcpPacket:
        """DISCOVER, OFFER, REQUEST, ACK; returns the ACK. A REQUEST that gets no answer (the
        server that offered died) is sent a few times, then the client starts over with a
        DISCOVER (RFC 2131 §4.4.1), as PXE ROMs and iPXE do."""
        for _attempt in range(4):
            xid = random.getrandbits(32)
            offer = await self.exchange(mac, xid, self.packet(mac, xid, D.MsgType.DISCOVER, ipxe),
                                        {D.MsgType.OFFER}, res)
            req = self.packet(mac, xid, D.MsgType.REQUEST, ipxe, {
                D.Opt.REQUESTED_IP: D.socket_aton(offer.yiaddr),
                D.Opt.SERVER_ID: offer.options[D.Opt.SERVER_ID],
            })
            try:
                ack = await self.exchange(mac, xid, req, {D.MsgType.ACK, D.MsgType.NAK}, res, REQUEST_TIMEOUTS)
            except Failed:
                res.dhcp_retries += 1
                continue
            if ack.msg_type == D.MsgType.ACK:
                return ack
            res.dhcp_retries += 1
        raise Failed("dhcp: no ACK after four DISCOVERs")
