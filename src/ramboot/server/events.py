"""Boot events from every server, written to the store in batches.

Servers call `record()` on the hot path; it only appends. A background task
flushes to the store a few times a second and wakes live watchers (the status
page's event stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..inventory.ports import EventSink
from ..inventory.records import EventRecord
from ..macaddr import normalize_mac

log = logging.getLogger("ramboot.events")

# One per DHCP packet, thousands a second in a boot storm: logged at debug (journald
# would rate-limit them anyway, and each line is a write). Every stage is still
# recorded in the store, counted in /metrics and streamed to the status page.
DEBUG_STAGES = frozenset({"dhcp-offer", "dhcp-ack"})

# The boot stage (CONTRACTS.md) a served file's kind is; other kinds are served without one.
STAGE_OF_KIND = {"loader": "loader", "pxelinux-cfg": "script", "ipxe-script": "script", "grub-cfg": "script",
                 "entry-script": "script",
                 "kernel": "kernel", "initrd": "initrd", "rootfs": "rootfs"}


# Per-node scripts and configs: their stage counts only when served to the node itself
# (the entry scripts, /boot.ipxe and grub/grub.cfg, are the same for every machine and
# count for whoever holds the address's hardware lease, as the boot programs do).
GENERATED_KINDS = frozenset({"pxelinux-cfg", "ipxe-script", "grub-cfg"})

MAX_PENDING = 200_000  # events held while the store refuses writes (about 100 MB at most)


PRUNE_EVERY = 3600.0  # seconds between prunes of old events (the first runs at start)


class EventLog:
    def __init__(self, sink: EventSink, flush_interval: float = 0.2, server: str | None = None,
                 keep_days: float = 90.0, keep_per_node: int = 5000):
        self.sink = sink  # the store's events part
        self.server = server  # this server's name, kept with each event (several may share the database)
        self.flush_interval = flush_interval
        self.keep_days = keep_days
        self.keep_per_node = keep_per_node
        self._pruned_at = -PRUNE_EVERY
        self.mac_by_ip: dict[str, str] = {}  # who holds an address, so TFTP/HTTP can name the node
        self._pending: list[EventRecord] = []
        self._watchers: list[Callable[[EventRecord], None]] = []
        self._task: asyncio.Task[None] | None = None

    def record(self, mac: str, stage: str, source: str = "server", **detail: Any) -> None:
        self.add(mac, stage, detail, source)

    def add(self, mac: str, stage: str, detail: dict[str, Any], source: str = "server") -> None:
        """`record()` with the detail as a dict (the DHCP hot path: no keyword unpacking)."""
        rec = EventRecord(normalize_mac(mac), stage, time.time(), source, detail, self.server)
        self._pending.append(rec)
        level = logging.DEBUG if stage in DEBUG_STAGES else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "event", extra={"mac": rec.mac, "stage": stage, "detail": detail})
        if not self._watchers:
            return
        for w in list(self._watchers):
            try:
                w(rec)
            except Exception:  # a broken watcher never stops the server
                log.exception("event watcher failed")

    def bind(self, ip: str, mac: str, lease: bool = False) -> None:
        """Learn which machine has an address. A DHCP lease (`lease=True`) is the
        authority; a served name or a node report only fills a gap (proxy mode)."""
        if lease:
            self.mac_by_ip[ip] = mac
        else:
            self.mac_by_ip.setdefault(ip, mac)

    def served(self, ip: str, kind: str, name: str, mac: str | None, nbytes: int, seconds: float,
               protocol: str) -> None:
        """TFTP and HTTP: a file went out in full. A generated file's name says whose it
        is (its MAC, set only when the access rule took the requester for that machine),
        which binds the address; other files are named by the address."""
        if mac:
            self.bind(ip, mac)
        if kind in GENERATED_KINDS and not mac:
            return  # a script or config the access rule did not take the requester for: no stage
        stage = STAGE_OF_KIND.get(kind)
        who = mac or self.mac_by_ip.get(ip)
        if stage and who:
            self.add(who, stage, {"file": name, "bytes": nbytes, "seconds": seconds, "protocol": protocol})

    def watch(self, fn: Callable[[EventRecord], None]) -> Callable[[], None]:
        self._watchers.append(fn)
        return lambda: self._watchers.remove(fn) if fn in self._watchers else None

    def _take(self) -> list[EventRecord]:
        batch, self._pending = self._pending, []
        return batch

    def _keep(self, batch: list[EventRecord]) -> None:
        """A batch the store refused goes back before the newer ones, up to MAX_PENDING (the oldest go)."""
        self._pending[:0] = batch
        if len(self._pending) > MAX_PENDING:
            lost = len(self._pending) - MAX_PENDING
            del self._pending[:lost]
            log.warning("events: %d oldest events dropped: the store has refused writes for a while", lost)

    def flush(self) -> None:
        batch = self._take()
        if batch:
            try:
                self.sink.add(batch)
            except Exception:
                self._keep(batch)
                raise

    async def _prune(self) -> None:
        """Retention: a node's timeline keeps its last `keep_per_node` events and `keep_days` days."""
        self._pruned_at = time.monotonic()
        try:
            gone = await asyncio.to_thread(self.sink.prune, time.time() - self.keep_days * 86400,
                                           self.keep_per_node)
        except Exception as e:
            log.warning("events: pruning failed: %s", str(e).splitlines()[0] if str(e) else e)
            return
        if gone:
            log.info("events: pruned %d (older than %g days, or beyond %d per node)", gone, self.keep_days,
                     self.keep_per_node)

    async def _run(self) -> None:
        while True:
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY:
                await self._prune()
            await asyncio.sleep(self.flush_interval)
            batch = self._take()
            if not batch:
                continue
            try:
                # In a worker thread: a locked or slow database never stalls the loop (and the
                # DHCP replies behind it); the insert is a few statements, so the GIL changes hands rarely.
                await asyncio.to_thread(self.sink.add, batch)
            except Exception as e:
                self._keep(batch)
                log.warning("events: flush failed, %d kept for the next try: %s", len(batch),
                            str(e).splitlines()[0] if str(e) else e)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
