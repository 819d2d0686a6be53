#!/usr/bin/env python3
"""The mypyc-compiled modules in-process: CPU µs per operation, compiled and pure side by side.

Each round runs this script twice, once as built and once with RAMBOOT_PURE_PYTHON=1 (the
.py source), alternating who goes first; it prints the medians and pure / compiled per row:
  dhcp_codec  decode + encode of a PXE DISCOVER-sized packet
  dhcp_core   one DORA (DISCOVER then REQUEST, the 4 encodes and 2 decodes included) through DhcpCore,
              with the real Booter's decision made once
  tftp_core   one 1,468-byte block of a lock-step ReadTransfer (per ACK)
  names       names.parse of a per-node script name
  render      render.entry_script

Usage: .venv/bin/python bench/compiled_micro.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def measure() -> dict[str, float]:
    from ramboot import names, render
    from ramboot.config import parse_config
    from ramboot.inventory.store import Store
    from ramboot.policy import Booter, Decision
    from ramboot.proto import tftp_core as tftp
    from ramboot.proto.dhcp_codec import DhcpPacket, MsgType, Opt, decode, encode, socket_aton
    from ramboot.proto.dhcp_core import DhcpCore
    from ramboot.proto.pxe import Client
    from ramboot.server.dhcp_server import dhcp_settings

    def cpu_us(fn: Callable[[int], object], n: int) -> float:
        t = time.process_time()
        fn(n)
        return (time.process_time() - t) / n * 1e6

    pxe: dict[int, bytes] = {Opt.CLIENT_ARCH: b"\x00\x00", Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001"}

    def pkt(mt: int, mac: bytes, opts: dict[int, bytes] | None = None) -> DhcpPacket:
        return DhcpPacket(xid=0x1234, chaddr=mac, options={Opt.MESSAGE_TYPE: bytes((mt,)), **pxe, **(opts or {})})

    wire = encode(pkt(MsgType.DISCOVER, bytes(6)), 1500)

    def codec(n: int) -> None:
        for _ in range(n):
            encode(decode(wire))

    out = {"dhcp_codec": cpu_us(codec, 20000)}
    with tempfile.TemporaryDirectory() as d:
        cfg = parse_config(f'data_dir = "{d}"\n[dhcp]\nmode = "full"\nrange = "10.88.0.10-10.88.255.250"\n'
                           'lease_time = 600\n[security]\nmax_unknown_leases = 1000000\n')
        booter = Booter(cfg, Store.for_config(cfg).directory, "10.88.0.1")
        first: list[Decision | None] = []

        # the policy's decision, made once (the policy is not compiled; docs: 8 µs)
        def decide(client: Client) -> Decision | None:
            if not first:
                first.append(booter.decide(client))
            return first[0]
        core = DhcpCore(dhcp_settings(cfg, "10.88.0.1"), decide, dict, [])

        def dora(n: int) -> None:
            for i in range(n):
                mac = (0x525400000000 + i).to_bytes(6, "big")
                offer = core.handle(encode(pkt(MsgType.DISCOVER, mac), 1500), ("0.0.0.0", 68), 67, 1000.0)
                yi = decode(offer.sends[0].data).yiaddr
                core.handle(encode(pkt(MsgType.REQUEST, mac, {Opt.REQUESTED_IP: socket_aton(yi),
                                                              Opt.SERVER_ID: socket_aton("10.88.0.1")}), 1500),
                            ("0.0.0.0", 68), 67, 1000.0)
        out["dhcp_core DORA (+codec)"] = cpu_us(dora, 5000)

    data = os.urandom(1468 * 4000)

    def blocks(n: int) -> None:
        m = tftp.ReadTransfer(tftp.Request(tftp.RRQ, "f", "octet", {"blksize": "1468"}), tftp.BytesSource(data))
        m.start(0.0)
        for b in range(0, n):
            m.on_packet(tftp.Ack(b & 0xFFFF).encode(), 0.0)
            m.read_ahead()
    out["tftp_core"] = cpu_us(blocks, 3999)
    name = "boot/52-54-00-12-34-56/4c4c4544-0042-3510-8048-b4c04f564433.ipxe"
    out["names"] = cpu_us(lambda n: [names.parse(name) for _ in range(n)], 50000)
    out["render"] = cpu_us(lambda n: [render.entry_script("http://10.88.0.1:8080") for _ in range(n)], 50000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        from ramboot.compiled import summary

        print(json.dumps({"summary": summary(), **measure()}))
        return 0
    res: dict[str, list[dict[str, Any]]] = {"compiled": [], "pure": []}
    for rnd in range(a.rounds):
        for kind in (["compiled", "pure"] if rnd % 2 == 0 else ["pure", "compiled"]):
            env = dict(os.environ, **({"RAMBOOT_PURE_PYTHON": "1"} if kind == "pure" else {}))
            env.pop("RAMBOOT_PURE_PYTHON", None) if kind == "compiled" else None
            p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child"], env=env,
                               capture_output=True, text=True, check=True)
            res[kind].append(json.loads(p.stdout.splitlines()[-1]))
    print(f"load {open('/proc/loadavg').read().split()[0]}; compiled: {res['compiled'][0]['summary']}")
    print(f"{'module':26s} {'compiled µs':>12s} {'pure µs':>9s} {'pure/compiled':>14s}")
    for key in res["compiled"][0]:
        if key == "summary":
            continue
        c = statistics.median(r[key] for r in res["compiled"])
        p = statistics.median(r[key] for r in res["pure"])
        print(f"{key:26s} {c:12.2f} {p:9.2f} {p / c:13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
