"""The live feed: boot events become metrics and server-sent events for the status page.

`EventLog.watch` calls the broadcaster on DHCP's and TFTP's hot path, so it
only queues; a task drains the queue in batches and sends each changed node's
status to every subscriber of `GET /api/v1/events/stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import web

from .. import metrics
from ..inventory.store import EVENT_CHANNEL, EventRecord, Store
from ..inventory.timeline import mbps_of, split_boots
from .http_context import CTX, Ctx

log = logging.getLogger("ramboot.events")


class Broadcaster:
    """Turns the event log's records into metrics and SSE messages.

    The watcher only queues (it runs on DHCP's and TFTP's hot path); a task
    drains the queue in batches, flushes the event log once, and sends each
    changed node's status to every subscriber.
    """

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: asyncio.Queue[tuple[str, float | None]] = asyncio.Queue()  # (mac, booted at)
        self.subscribers: set[asyncio.Queue[bytes | None]] = set()
        self._unwatch: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._others: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def on_event(self, rec: EventRecord) -> None:
        metrics.BOOTS.labels(rec.stage).inc()
        if rec.stage == "download-done":
            mbps = mbps_of(rec.detail)
            if mbps is not None:
                metrics.ROOT_DOWNLOAD_MBPS.observe(mbps)
        if rec.stage == "booted" or self.subscribers:
            assert self.loop is not None
            booted_at = rec.at if rec.stage == "booted" else None
            self.loop.call_soon_threadsafe(self.pending.put_nowait, (rec.mac, booted_at))

    def poke(self, mac: str) -> None:
        """A change that is no boot event (inventory, node edits): refresh that row."""
        if self.subscribers:
            self.pending.put_nowait((mac, None))

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1000)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[bytes | None]) -> None:
        self.subscribers.discard(q)

    async def start(self, _app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()
        self._unwatch = self.ctx.events.watch(self.on_event)
        self._task = self.loop.create_task(self._run())
        cluster = self.ctx.cluster
        if cluster is not None and self.ctx.store.shared:
            # Boots served by the other servers on the database: woken by their NOTIFY, polled as a backstop.
            if cluster.listener is not None:
                cluster.listener.on(EVENT_CHANNEL, lambda sender: None if sender == cluster.name else self._wake.set())
            self._others = self.loop.create_task(self._follow_others(cluster.name))

    async def stop(self, _app: web.Application) -> None:
        if self._unwatch:
            self._unwatch()
        for task in (self._task, self._others):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for q in list(self.subscribers):
            _offer(q, None)

    async def _follow_others(self, me: str) -> None:
        """Other servers' events (after this server started) become live updates here too."""
        store = self.ctx.store
        last = await asyncio.to_thread(store.events.last_id)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 2.0)
            self._wake.clear()
            try:
                rows = await asyncio.to_thread(store.events.after, last, me)
            except Exception:
                log.exception("reading other servers' events failed")
                continue
            for event_id, rec in rows:
                last = max(last, event_id)
                if self.subscribers:  # metrics stay per server: each counts what it served
                    self.pending.put_nowait((rec.mac, None))

    async def _run(self) -> None:
        while True:
            keys = {await self.pending.get()}
            await asyncio.sleep(0.05)  # gather a burst into one batch
            while not self.pending.empty():
                keys.add(self.pending.get_nowait())
            try:
                self.ctx.events.flush()
                await self._publish(keys)
            except Exception:
                log.exception("live update failed")

    async def _publish(self, keys: set[tuple[str, float | None]]) -> None:
        store = self.ctx.store
        for mac, at in keys:
            if at is not None:
                duration = await asyncio.to_thread(boot_duration, store, mac, at)
                if duration is not None:
                    metrics.BOOT_DURATION.observe(duration)
        if not self.subscribers:
            return
        macs = sorted({mac for mac, _ in keys})
        rows = await asyncio.to_thread(self.ctx.service.status, macs)
        for row in rows:
            msg = f"event: node\ndata: {row.model_dump_json()}\n\n".encode()
            for q in list(self.subscribers):
                _offer(q, msg)


def boot_duration(store: Store, mac: str, booted_at: float) -> float | None:
    """The duration of the boot that reached `booted` at this time (later boots may have begun)."""
    for boot in split_boots(store.events.of(mac)):
        if any(e.stage == "booted" and e.at == booted_at for e in boot.events):
            return boot.duration
    return None


def _offer(q: asyncio.Queue[bytes | None], msg: bytes | None) -> None:
    """Never block the feed on one slow browser: drop its oldest message instead."""
    if q.full():
        q.get_nowait()
    q.put_nowait(msg)


BROADCAST = web.AppKey("ramboot-broadcast", Broadcaster)


def install(app: web.Application) -> None:
    """One broadcaster per application, started and stopped with it."""
    broadcaster = Broadcaster(app[CTX])
    app[BROADCAST] = broadcaster
    metrics.SSE_CLIENTS.set_function(lambda: float(len(broadcaster.subscribers)))
    app.on_startup.append(broadcaster.start)
    app.on_shutdown.append(broadcaster.stop)


async def event_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one `node` message (a NodeStatus) whenever a node changes."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    q = request.app[BROADCAST].subscribe()
    try:
        await resp.write(b"retry: 2000\n: connected\n\n")
        while True:
            try:
                msg = await asyncio.wait_for(q.get(), timeout=15)
            except TimeoutError:
                msg = b": keep-alive\n\n"
            if msg is None:
                break
            await resp.write(msg)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        request.app[BROADCAST].unsubscribe(q)
    return resp


