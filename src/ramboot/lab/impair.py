"""A lossy, slow wire: Ethernet frames between two ports, each direction dropped and delayed.

`tc qdisc ... netem loss 5% delay 20ms` is the usual tool, but a kernel built
without `CONFIG_NET_SCH_NETEM` (this lab's own CI kernel, and many VM kernels
with no loadable modules) has no netem, and netem on a bridge only shapes what
the bridge's own address sends. This relay is the same model in userspace, on
every kernel, in both directions:

- each frame is dropped with probability `loss` (independently, a seeded RNG,
  so a run can be repeated), then held `delay` seconds and sent on in order;
- at most `limit` frames wait per direction (netem's default queue, 1000);
  beyond it a frame is dropped, as netem does.

A port is a tap opened by name inside a network namespace (`tap:NS:IFNAME`, the
tap made beforehand, persistent, by `ip tuntap add`), or a UDP endpoint that
QEMU's `-netdev socket,udp=...,localaddr=...` talks to (`udp:LISTEN_PORT:PEER_PORT`
on 127.0.0.1 of the namespace the relay runs in; 0 for either: a free one, printed on
the `ready` line). Frames are whole Ethernet
frames both ways (a tap without IFF_VNET_HDR gets segmented frames).

    python -m ramboot.lab.impair --port tap:NS1:if1 --port tap:NS2:if2 --loss 0.05 --delay 0.02 [--seed N]

It prints `ready` once both ports are open, and on SIGTERM one JSON line of
counters (frames seen, dropped by loss, dropped by the queue limit, per direction).
Only the relay's own file descriptors are touched; its taps lose their carrier
when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import json
import os
import random
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from .netns import enter_netns, setns_fd

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class Impairment:
    """What the wire does to every frame, in each direction."""

    loss: float = 0.05  # probability a frame is dropped
    delay: float = 0.020  # seconds every frame is held
    limit: int = 1000  # frames waiting per direction before the queue drops
    seed: int | None = None

    def argv(self) -> list[str]:
        a = ["--loss", str(self.loss), "--delay", str(self.delay), "--limit", str(self.limit)]
        return a + (["--seed", str(self.seed)] if self.seed is not None else [])

    def describe(self) -> str:
        return f"loss {self.loss:.0%} and delay {self.delay * 1000:.0f} ms each way"


def open_tap(ifname: str, ns: str | None = None) -> int:
    """An fd on the existing tap `ifname` (in namespace `ns`: the tap is looked up where we are)."""
    if ns:
        enter_netns(ns)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class WireCounters(TypedDict):
    """One direction's counters, as the relay prints them on SIGTERM."""

    frames: int
    lost: int
    queue_drops: int
    sent: int


class RelayReport(TypedDict):
    """The relay's last line: what it did and its counters per direction."""

    impairment: str
    directions: dict[str, WireCounters]


@dataclass
class _Direction:
    name: str
    send: Callable[[bytes], object]
    queue: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    timer: asyncio.TimerHandle | None = None
    frames: int = 0
    lost: int = 0
    overflow: int = 0
    sent: int = 0


class Relay:
    """Two ports, two directions; see the module notes."""

    def __init__(self, imp: Impairment):
        self.imp = imp
        self.rng = random.Random(imp.seed)
        self.loop = asyncio.get_running_loop()
        self.dirs: list[_Direction] = []

    def _enqueue(self, d: _Direction, frame: bytes) -> None:
        d.frames += 1
        if self.rng.random() < self.imp.loss:
            d.lost += 1
            return
        if len(d.queue) >= self.imp.limit:
            d.overflow += 1
            return
        d.queue.append((time.monotonic() + self.imp.delay, frame))
        if d.timer is None:
            d.timer = self.loop.call_at(self.loop.time() + self.imp.delay, self._flush, d)

    def _flush(self, d: _Direction) -> None:
        d.timer = None
        now = time.monotonic()
        q = d.queue
        while q and q[0][0] <= now + 0.0005:
            frame = q.popleft()[1]
            try:
                d.send(frame)
                d.sent += 1
            except (BlockingIOError, InterruptedError):
                d.overflow += 1  # the receiving side is full: a drop, as on a wire
            except OSError:
                d.overflow += 1
        if q:
            d.timer = self.loop.call_at(self.loop.time() + max(0.0, q[0][0] - now), self._flush, d)

    def add(self, reader_fd: int, read: Callable[[], bytes | None], direction: _Direction) -> None:
        """Frames read from `reader_fd` (by `read()`, None when drained) go out by `direction`."""

        def readable() -> None:
            for _ in range(256):
                try:
                    frame = read()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                if frame is None:
                    return
                self._enqueue(direction, frame)

        self.loop.add_reader(reader_fd, readable)
        self.dirs.append(direction)

    def counters(self) -> dict[str, WireCounters]:
        return {d.name: WireCounters(frames=d.frames, lost=d.lost, queue_drops=d.overflow, sent=d.sent)
                for d in self.dirs}


class _Port:
    """One end: `fd` to wait on, `read()` a frame, `write(frame)`."""

    def __init__(self, spec: str):
        kind, _, rest = spec.partition(":")
        self.spec = spec
        self.udp: tuple[int, int] | None = None
        self.read: Callable[[], bytes | None]
        self.write: Callable[[bytes], object]
        if kind == "tap":
            ns, _, ifname = rest.rpartition(":")
            self.fd = open_tap(ifname, ns or None)
            self.read = lambda: os.read(self.fd, 65536)
            self.write = lambda b: os.write(self.fd, b)
        elif kind == "udp":
            listen, _, peer = rest.partition(":")
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", int(listen)))  # 0: any free port (printed on the ready line)
            if int(peer or 0) == 0:
                peer = str(free_udp_port())
            s.setblocking(False)
            for opt in (33, 32):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                except OSError:
                    pass
            self.sock, self.fd = s, s.fileno()
            self.udp = (int(s.getsockname()[1]), int(peer))
            dest = ("127.0.0.1", int(peer))
            self.read = lambda: s.recv(65536)
            self.write = lambda b: s.sendto(b, dest)
        else:
            raise SystemExit(f"impair: unknown port {spec!r} (tap:NS:IF or udp:LISTEN:PEER)")


async def _main(a: argparse.Namespace) -> None:
    imp = Impairment(a.loss, a.delay, a.limit, a.seed)
    # Taps in other namespaces: open each (setns moves this thread), then come back.
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        ports = []
        for spec in a.port:
            ports.append(_Port(spec))
            setns_fd(home, "back")
    finally:
        os.close(home)
    p1, p2 = ports
    relay = Relay(imp)
    relay.add(p1.fd, p1.read, _Direction(f"{p1.spec} -> {p2.spec}", p2.write))
    relay.add(p2.fd, p2.read, _Direction(f"{p2.spec} -> {p1.spec}", p1.write))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        relay.loop.add_signal_handler(sig, stop.set)
    udp = [p.udp for p in ports if p.udp]
    # ready [LISTEN PEER]: QEMU's end is `-netdev socket,udp=127.0.0.1:LISTEN,localaddr=127.0.0.1:PEER`
    print("ready" + (f" {udp[0][0]} {udp[0][1]}" if udp else ""), flush=True)
    await stop.wait()
    print(json.dumps(RelayReport(impairment=imp.describe(), directions=relay.counters())), flush=True)


def free_udp_port() -> int:
    """A free UDP port on 127.0.0.1 here (for QEMU's end of a socket netdev)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ramboot.lab.impair", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", action="append", required=True, help="tap:NS:IF or udp:LISTEN:PEER (twice)")
    ap.add_argument("--loss", type=float, default=0.05)
    ap.add_argument("--delay", type=float, default=0.020)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    if len(a.port) != 2:
        ap.error("give exactly two --port")
    asyncio.run(_main(a))


if __name__ == "__main__":
    main()
