"""Several servers on one database: who is alive, which images each holds verified, live changes.

Each server registers itself in the `servers` table (name, address, HTTP base,
the images it holds verified with every file's sha256) and renews `last_seen`
every `[cluster] heartbeat` seconds. A server silent for `[cluster] dead_after`
seconds is no longer named to nodes. `mirrors(image)` is what the policy asks:
the HTTP bases of every live server holding that image byte for byte (the same
sha256 for every file), this server first if it holds it.

On PostgreSQL a `Listener` keeps one connection of its own LISTENing, so lease
changes and event batches committed by other servers arrive within
milliseconds (`store.leases.save` and `store.events.add` NOTIFY in the same
transaction, so a notification means a commit). On SQLite there is one server
and nothing to listen to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..images.manifest import ManifestError, images_dir, load_manifest, sha256_file
from ..inventory.store import EVENT_CHANNEL, LEASE_CHANNEL, ServerRecord, Store

log = logging.getLogger("ramboot.cluster")

CHANNELS = (LEASE_CHANNEL, EVENT_CHANNEL)
MAX_MIRRORS = 4  # servers named per node: the kernel command line is 2 KiB on x86


def server_name(config: Config, server_ip: str) -> str:
    return config.cluster.name or f"{socket.gethostname()}-{server_ip}"[:64]


class ImageCheck:
    """The images under DATA/images whose every file matches its manifest's sha256.

    A file is hashed again only when its inode, size or mtime changes, so a
    heartbeat costs a few stats. An image with any file missing or different is
    not held: it is offered to no node, by this server or in the database.
    """

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._seen: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def scan(self) -> dict[str, dict[str, str]]:
        top = images_dir(self.data_dir)
        out: dict[str, dict[str, str]] = {}
        for d in sorted(top.iterdir()) if top.is_dir() else []:
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                m = load_manifest(self.data_dir, d.name)
            except ManifestError:
                continue
            files: dict[str, str] = {}
            for fname, entry in m.files.items():
                p = d / fname
                try:
                    st = p.stat()
                except OSError:
                    break
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                hit = self._seen.get(p)
                if hit is None or hit[0] != key:
                    if st.st_size != entry.size:
                        break
                    try:
                        hit = self._seen[p] = (key, sha256_file(p))
                    except OSError:
                        break
                if hit[1] != entry.sha256:
                    log.warning("image %s: %s does not match its manifest's sha256; not offered", d.name, fname)
                    break
                files[fname] = hit[1]
            else:
                if files:
                    out[d.name] = files
        return out


class Listener:
    """One PostgreSQL connection LISTENing on some channels; callbacks get (payload) per notification."""

    def __init__(self, store: Store):
        self.store = store
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._reconnected: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def on(self, channel: str, fn: Callable[[str], None]) -> None:
        self._handlers.setdefault(channel, []).append(fn)

    def on_reconnect(self, fn: Callable[[], None]) -> None:
        """Called after every (re)connection: what was missed meanwhile must be loaded."""
        self._reconnected.append(fn)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import psycopg

        delay = 0.5
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.store.listen_dsn(), autocommit=True) as conn:
                    for ch in CHANNELS:  # all of them, whoever subscribes later
                        await conn.execute(f'LISTEN "{ch}"')
                    self.connected.set()
                    if not first:
                        for reload in self._reconnected:
                            reload()
                    first, delay = False, 0.5
                    async for n in conn.notifies():
                        for fn in self._handlers.get(n.channel, ()):
                            try:
                                fn(n.payload)
                            except Exception:
                                log.exception("cluster: a %s notification broke its handler", n.channel)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.connected.clear()
                first = False
                log.warning("cluster: LISTEN connection lost (%s); again in %.1f s", str(e).splitlines()[0], delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


class Cluster:
    """This server among the others on the database; see the module notes."""

    def __init__(self, config: Config, store: Store, server_ip: str, http_base: str):
        self.config = config
        self.store = store
        self.name = server_name(config, server_ip)
        self.address = server_ip
        self.http_base = http_base
        self.started = time.time()
        self.images = ImageCheck(config.data_dir)
        self.held: dict[str, dict[str, str]] = {}
        self.peers: list[ServerRecord] = []  # the other live servers, as of the last heartbeat
        self.listener: Listener | None = Listener(store) if store.shared else None
        self._task: asyncio.Task[None] | None = None
        self.seed = zlib.crc32(self.name.encode())

    # -- what the policy asks -------------------------------------------------
    def mirrors(self, image: str, group: str | None = None) -> tuple[str, ...]:
        """HTTP bases of the live servers that hold `image` verified, at most MAX_MIRRORS.
        With a `group` (the node's rack), that group's servers come first, then the others;
        within each, this server first, then peers in the heartbeat's spread order."""
        mine = self.held.get(image)
        want = mine
        if want is None:  # not held here (yet): any live peer's copy, the same as each other's
            for p in self.peers:
                if image in p.images:
                    want = p.images[image]
                    break
        if not want:
            return ()
        holders = [(self.config.cluster.group, self.http_base)] if mine else []
        holders += [(p.group, p.http_base) for p in self.peers
                    if p.images.get(image) == want and p.http_base != self.http_base]
        if group is not None:
            holders.sort(key=lambda h: h[0] != group)  # stable: the order within each part is kept
        return tuple(base for _, base in holders[:MAX_MIRRORS])

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self.held = await asyncio.to_thread(self.images.scan)
        await asyncio.to_thread(self.store.servers.heartbeat, self._record())
        await asyncio.to_thread(self._refresh_peers)
        if self.listener is not None:
            self.listener.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listener.connected.wait(), 10)
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.listener is not None:
            await self.listener.close()
        try:
            await asyncio.to_thread(self.store.servers.remove, self.name)  # nodes stop being told at once
        except Exception:
            log.exception("cluster: could not deregister %s", self.name)

    def _record(self) -> ServerRecord:
        return ServerRecord(name=self.name, address=self.address, http_base=self.http_base, images=self.held,
                            started=self.started, last_seen=time.time(), group=self.config.cluster.group)

    def _refresh_peers(self) -> None:
        cutoff = time.time() - self.config.cluster.dead_after
        self.peers = sorted((s for s in self.store.servers.all() if s.name != self.name and s.last_seen >= cutoff),
                            key=lambda s: zlib.crc32(s.name.encode()))

    def _beat_once(self) -> None:
        held = self.images.scan()
        if held != self.held or not self.store.servers.touch(self.name, time.time()):
            if held != self.held:
                log.info("cluster: images held verified now %s", ", ".join(sorted(held)) or "none")
            self.held = held
            self.store.servers.heartbeat(self._record())
        self._refresh_peers()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.config.cluster.heartbeat)
            try:
                await asyncio.to_thread(self._beat_once)
            except Exception as e:
                log.warning("cluster: heartbeat failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)

