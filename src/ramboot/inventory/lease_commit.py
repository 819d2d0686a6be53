"""Lease durability: a DHCP server's lease changes, durable before its replies leave.

The DHCP shell hands each result that changes leases to `LeaseCommitter.commit()`
and sends the reply when the returned future is done: then the change is
durable (the "no ACK before its lease is durable" rule). Inside, one component
owns everything that takes:

- the batching window (group commit): changes that arrive while a batch is due
  are merged address by address (`lease_journal.merge`) and written as one;
  at most one commit per `BATCH_WINDOW`, the first after a quiet spell at once;
- alone on a SQLite file, the lease journal (`lease_journal.py`): a batch is
  one appended line (a few microseconds), so the window is 0, and a worker
  thread brings the leases table up to date every `CHECKPOINT_EVERY` seconds
  (`LeaseRepo.checkpoint`);
- on a shared PostgreSQL, the conditional binds of `LeaseRepo.save` (a bind
  another server's client beat comes back in `LeaseCommit.lost`) and their
  NOTIFY; `follow()` feeds the other servers' notifications, and a reload every
  `RELOAD_EVERY` seconds as a backstop, to this server's core.

A batch that cannot be made durable fails every future in it: those replies
never leave, the clients retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from .. import metrics
from .lease_journal import CHECKPOINT_EVERY, merge
from .parts.leases import LEASE_CHANNEL, LeaseCommit, LeaseRepo, parse_notify
from .records import LeaseRecord

log = logging.getLogger("ramboot.dhcp")

# At most one lease commit per BATCH_WINDOW: after a quiet spell the first batch commits
# as soon as the datagrams read with it are handled (no wait at low rates); under load
# the replies of a whole window share one transaction (a commit costs ~0.2-0.5 ms of CPU
# in SQLAlchemy and sqlite, a lease in it ~7 us).
BATCH_WINDOW = 0.004
RELOAD_EVERY = 5.0  # seconds between loads of other servers' recent leases (a backstop to LISTEN/NOTIFY)
RELOAD_OVERLAP = 15.0  # each load re-reads this many seconds back: commits finish out of order, clocks differ

Learn = Callable[[list[LeaseRecord], list[tuple[str, str | None]]], None]


class LeaseChanges(Protocol):
    """What one DHCP result changed (`proto.dhcp_core.Result` is one)."""

    @property
    def upserts(self) -> list[LeaseRecord]: ...

    @property
    def deletes(self) -> list[str]: ...

    @property
    def moved(self) -> Mapping[str, str]: ...  # lease key -> the address it left (the core knew it held)

    @property
    def owners(self) -> Mapping[str, str]: ...  # deleted address -> the key that held it


class DurableLeases(Protocol):
    """A leases table with its journal: `LeaseRepo` (IPv4) and `Lease6Repo` (DHCPv6)."""

    @property
    def journaled(self) -> bool: ...

    @property
    def journal_pending(self) -> bool: ...

    def open_journal(self) -> bool: ...

    def checkpoint(self) -> None: ...

    def save(self, upserts: Iterable[LeaseRecord], deletes: Iterable[str] = (), *,
             moved: Mapping[str, str] | None = None, owners: Mapping[str, str] | None = None,
             now: float | None = None, sender: str = "") -> LeaseCommit: ...


class Notifications(Protocol):
    """A LISTEN connection (`server.cluster.Listener`)."""

    def on(self, channel: str, fn: Callable[[str], None]) -> None: ...

    def on_reconnect(self, fn: Callable[[], None]) -> None: ...


class LeaseCommitter:
    """The one component that makes a DHCP server's lease changes durable; see the module notes."""

    def __init__(self, leases: DurableLeases, *, sender: str, journal: bool = True):
        """`journal`: use the lease journal when this server is alone on a SQLite file
        (the DHCP server in full mode); `sender`: this server's name in notifications."""
        self.leases = leases
        self.sender = sender
        self._loop = asyncio.get_running_loop()
        self.window = 0.0 if journal and leases.open_journal() else BATCH_WINDOW
        self._pending: list[tuple[LeaseChanges, asyncio.Future[LeaseCommit]]] = []
        self._flusher: asyncio.Handle | asyncio.TimerHandle | None = None
        self._last_commit = -BATCH_WINDOW  # loop time of the last commit
        self._checkpoint: asyncio.TimerHandle | asyncio.Future[None] | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._loaded_at = time.time()
        self._learn: Learn | None = None

    # -- commit ---------------------------------------------------------------
    def commit(self, changes: LeaseChanges) -> asyncio.Future[LeaseCommit]:
        """Durable when the future is done (its `lost`: binds the database refused); failed: not durable.
        A future, not a coroutine: the shell adds a callback, no task per datagram."""
        fut: asyncio.Future[LeaseCommit] = self._loop.create_future()
        self._pending.append((changes, fut))
        if self._flusher is None:
            wait = self._last_commit + self.window - self._loop.time()
            self._flusher = (self._loop.call_later(wait, self._flush_due) if wait > 0
                             else self._loop.call_soon(self._flush_due))  # after the burst being read
        return fut

    def _flush_due(self) -> None:
        self._flusher = None
        self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        final: dict[str, LeaseRecord | None] = {}  # the last change per address, in the order of last changes
        ip_of_key: dict[str, str] = {}
        moved: dict[str, str] = {}
        owners: dict[str, str] = {}
        for changes, _ in batch:
            if changes.owners:
                owners.update(changes.owners)
            merge(final, changes.upserts, changes.deletes, ip_of_key, owners)
            for key, left in changes.moved.items():
                moved.setdefault(key, left)  # the first address a key left is the one the table holds
        upserts = [r for r in final.values() if r is not None]
        deletes = [ip for ip, r in final.items() if r is None]
        started = time.perf_counter()
        self._last_commit = self._loop.time()
        try:
            done = self.leases.save(upserts, deletes, moved=moved, owners=owners, sender=self.sender)
        except Exception as e:
            # Without the commit, no ACK: the clients retry and we answer again.
            log.exception("dhcp: lease commit failed; %d replies withheld", len(batch))
            metrics.dropped("dhcp", "commit-failed", len(batch))
            for _, fut in batch:
                fut.set_exception(e)
            return
        metrics.DHCP_COMMIT_SECONDS.observe(time.perf_counter() - started)
        if self.leases.journaled and self._checkpoint is None:
            self._checkpoint = self._loop.call_later(CHECKPOINT_EVERY, self._checkpoint_due)
        for _, fut in batch:
            fut.set_result(done)

    # -- the journal's checkpoints ----------------------------------------------
    def _checkpoint_due(self) -> None:
        """The leases table catches up with the journal, in a worker thread (sqlite steps without the GIL)."""
        fut = self._checkpoint = asyncio.ensure_future(asyncio.to_thread(self.leases.checkpoint))
        fut.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, fut: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not fut.cancelled() and fut.exception() is not None:
            # The journal keeps the changes (durable) and the next catch-up tries again.
            log.warning("dhcp: the leases table could not catch up with the journal: %s", fut.exception())
        if self.leases.journal_pending:  # what came in meanwhile, or what failed
            self._checkpoint = self._loop.call_later(CHECKPOINT_EVERY, self._checkpoint_due)

    # -- the other servers' leases ------------------------------------------------
    def follow(self, notifications: Notifications | None, learn: Learn) -> None:
        """Other servers' committed leases go to `learn` (the core's): within milliseconds by
        NOTIFY, and from the table every RELOAD_EVERY seconds, should a notification be missed."""
        self._learn = learn
        if notifications is not None:
            notifications.on(LEASE_CHANNEL, self._notified)
            notifications.on_reconnect(self._reload_soon)
        self._reloader = self._loop.create_task(self._reload_loop())

    def _notified(self, payload: str) -> None:
        sender, written, deleted = parse_notify(payload)
        if sender != self.sender and self._learn is not None:
            self._learn(written, deleted)

    def _reload_soon(self) -> None:
        self._loop.create_task(self._reload_once())

    async def _reload_once(self) -> None:
        since = self._loaded_at - RELOAD_OVERLAP
        self._loaded_at = time.time()
        assert isinstance(self.leases, LeaseRepo)  # follow(): IPv4's several servers
        try:
            recs = await asyncio.to_thread(self.leases.since, since)
        except Exception as e:
            log.warning("dhcp: loading other servers' leases failed: %s", str(e).splitlines()[0] if str(e) else e)
            return
        if self._learn is not None:
            self._learn(recs, [])

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_EVERY)
            await self._reload_once()

    # -- shutdown -------------------------------------------------------------------
    async def close(self) -> None:
        """Commit what is pending (its futures' callbacks run before this returns), stop following,
        and let the leases table take everything the journal holds."""
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
            self._reloader = None
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._flush()
        await asyncio.sleep(0)  # the done callbacks (the replies) run now, while the shell's sockets are open
        if isinstance(self._checkpoint, asyncio.Future):  # a catch-up running: let it finish
            await asyncio.wait([self._checkpoint])
        elif self._checkpoint is not None:  # a timer (uvloop's is no asyncio.Handle)
            self._checkpoint.cancel()
        self._checkpoint = None
        await asyncio.to_thread(self.leases.checkpoint)
