"""Run in a client namespace: N clients bind, then each asks again and hears every server's offer.

Usage: python dhcp_two_offers.py IFACE N. Prints JSON: how many bound, how many got an
offer from two servers on the second DISCOVER, and every offer of an address other than
the one the client holds ("moved").
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

from ramboot.proto import dhcp_codec as D


def sock(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.bind(("0.0.0.0", 68))
    return s


def packet(mac: bytes, xid: int, msg: int, extra: dict | None = None) -> bytes:
    opts = {D.Opt.MESSAGE_TYPE: bytes([msg]), D.Opt.MAX_MESSAGE_SIZE: struct.pack("!H", 1472)}
    opts.update(extra or {})
    return D.encode(D.DhcpPacket(op=D.BOOTREQUEST, xid=xid, flags=D.FLAG_BROADCAST, chaddr=mac, options=opts))


def collect(s: socket.socket, xid: int, want: set[int], seconds: float, until: int = 99) -> list:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end and len(out) < until:
        r, _, _ = select.select([s], [], [], max(0.0, end - time.monotonic()))
        if not r:
            break
        data = s.recv(4096)
        try:
            p = D.decode(data)
        except D.DhcpDecodeError:
            continue
        if p.xid == xid and p.op == D.BOOTREPLY and p.msg_type in want:
            out.append(p)
    return out


def main(ifname: str, n: int) -> None:
    s = sock(ifname)
    bound: dict[bytes, str] = {}
    for i in range(n):
        mac = bytes([0x02, 0x77]) + os.urandom(3) + bytes([i])
        for _ in range(3):
            xid = int.from_bytes(os.urandom(4), "big")
            s.sendto(packet(mac, xid, D.MsgType.DISCOVER), ("255.255.255.255", 67))
            offers = collect(s, xid, {D.MsgType.OFFER}, 1.0, until=1)
            if not offers:
                continue
            o = offers[0]
            s.sendto(packet(mac, xid, D.MsgType.REQUEST, {D.Opt.REQUESTED_IP: D.socket_aton(o.yiaddr),
                                                           D.Opt.SERVER_ID: o.options[D.Opt.SERVER_ID]}),
                     ("255.255.255.255", 67))
            acks = collect(s, xid, {D.MsgType.ACK, D.MsgType.NAK}, 2.0, until=1)
            if acks and acks[0].msg_type == D.MsgType.ACK:
                bound[mac] = acks[0].yiaddr
                break
    time.sleep(0.3)
    both, moved = 0, []
    for mac, ip in bound.items():
        xid = int.from_bytes(os.urandom(4), "big")
        s.sendto(packet(mac, xid, D.MsgType.DISCOVER), ("255.255.255.255", 67))
        offers = collect(s, xid, {D.MsgType.OFFER}, 1.0, until=2)
        if len({o.server_id for o in offers}) == 2:
            both += 1
        moved += [[mac.hex(), ip, o.yiaddr, o.server_id] for o in offers if o.yiaddr != ip]
    print(json.dumps({"bound": len(bound), "both_offered": both, "moved": moved}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
