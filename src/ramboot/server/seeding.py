"""Booted nodes seed their peers: which peer a root download is sent to, and what each served.

A node that booted and verified its root keeps serving that file from RAM on
SEED_PORT (the initramfs starts busybox httpd before switch_root; docs/decisions.md,
"Nodes seed their peers"), and says so with the `seeding` stage. `Seeds` is the
server's view, pure (time passed in): the peers per root sha256, how many downloads
each has been handed (at most `[scale] seed_fanout` at a time), which ones failed a
downloading node. The URL of a peer is never taken from a report: it is built from
the address the report came from, and the sha256 from the image the server itself
told that node to boot and the sha256 it reported as verified. A downloading node
checks every byte against the sha256 on its command line, so a peer can cost a
fall-back to the server, never a wrong root.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

SEED_PORT = 8790  # where a seeding node's httpd listens (the initramfs's SEED_PORT, the same)
HOLD = 120.0  # a redirect counts against its peer until the node reports the download, or this long
FALLBACK = "seed=0"  # the query that asks the server for the file itself (a node's fall-back)
FALLBACK_HEADER = "X-Ramboot-Fallback"  # "1": a dracut node that checks a peer's bytes and falls back (its module)


@dataclass
class Peer:
    mac: str
    ip: str
    image: str
    files: dict[str, str]  # served file name -> its sha256 (the root, and the modules layer if any)
    group: str | None
    since: float
    active: dict[str, float] = field(default_factory=dict)  # downloading node -> when its slot lapses
    served_bytes: int = 0
    downloads: int = 0
    refused: str = ""  # why a downloading node refused it: skipped from then on

    @property
    def host(self) -> str:
        """The URL's authority: an IPv6 address in brackets (RFC 3986 §3.2.2)."""
        return f"[{self.ip}]:{SEED_PORT}" if ":" in self.ip else f"{self.ip}:{SEED_PORT}"

    @property
    def base(self) -> str:
        return f"http://{self.host}"

    def url(self, file: str) -> str:
        return f"{self.base}/images/{self.image}/{file}"


class Seeds:
    """The seeding peers this server knows, by MAC; see the module notes."""

    def __init__(self, fanout: int):
        self.fanout = fanout
        self.peers: dict[str, Peer] = {}
        self.redirects = 0
        self.serving = 0  # seeded files the server itself is sending now (the shell counts them)

    def offer(self, mac: str, ip: str, image: str, files: dict[str, str], group: str | None, now: float) -> Peer:
        """`mac` (at `ip`) serves `files` of `image` from now on."""
        ipaddress.ip_address(ip)  # only an address, never a name or a URL, goes into a peer's URL
        peer = self.peers[mac] = Peer(mac, ip, image, dict(files), group, now)
        return peer

    def drop(self, mac: str) -> Peer | None:
        """`mac` stopped seeding (it boots again, or it failed)."""
        return self.peers.pop(mac, None)

    def pick(self, downloader: str | None, sha256: str, group: str | None, now: float) -> Peer | None:
        """A peer holding the file `sha256` with a free slot, the downloader's group first, then the
        least busy; None: the server sends it itself. The pick takes one of the peer's slots."""
        best: tuple[bool, int, float] | None = None
        chosen = None
        for peer in self.peers.values():
            if peer.mac == downloader or peer.refused or sha256 not in peer.files.values():
                continue
            for mac in [m for m, until in peer.active.items() if until <= now]:
                del peer.active[mac]
            if len(peer.active) >= self.fanout:
                continue
            rank = (peer.group != group or group is None, len(peer.active), peer.since)
            if best is None or rank < best:
                best, chosen = rank, peer
        if chosen is not None:
            chosen.active[downloader or f"?{self.redirects}"] = now + HOLD
            self.redirects += 1
        return chosen

    def done(self, downloader: str, url: str, nbytes: int) -> Peer | None:
        """`downloader` reports a download finished from `url`: if that is a peer, it served the bytes."""
        peer = self._at(url)
        if peer is None:
            return None
        peer.active.pop(downloader, None)
        peer.served_bytes += max(0, nbytes)
        peer.downloads += 1
        return peer

    def refuse(self, downloader: str, url: str, why: str) -> Peer | None:
        """`downloader` could not use the file from `url` (no answer, a stall, wrong bytes): that peer
        is skipped until it boots again. A hostile report costs only downloads from the server."""
        peer = self._at(url)
        if peer is None:
            return None
        peer.active.pop(downloader, None)
        peer.refused = why[:120] or "refused"
        return peer

    def _at(self, url: str) -> Peer | None:
        host = url.split("://", 1)[-1].split("/", 1)[0]
        for peer in self.peers.values():
            if host == peer.host:
                return peer
        return None
