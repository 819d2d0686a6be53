"""Boot events: the batches the event log flushes, their retention, and the reads of the views."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable
from typing import cast

from sqlalchemy import Table, delete, exists, func, insert, select

from ...macaddr import normalize_mac
from ..models import Event, Inventory, Node
from ..records import EventRecord
from .db import CHUNK, Db

EVENT_CHANNEL = "ramboot_events"  # a batch of events was committed (payload: the server's name)
_EVENT_COLUMNS = ("mac", "stage", "source", "detail", "at", "server")  # the table's order
_INSERT_EVENT = insert(cast(Table, Event.__table__))
_SQLITE_EVENTS = f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES "


class EventRepo:
    def __init__(self, db: Db, seen_keep_days: float = 1.0):
        """Retention: events of machines only seen go after `seen_keep_days` (`prune`)."""
        self._db = db
        self.seen_keep_days = seen_keep_days

    def add(self, events: Iterable[EventRecord]) -> None:
        """A batch of events whose MACs are already normalised (EventLog does it as each is recorded)."""
        dumps = json.dumps  # what the JSON column's bind processor does, done here for the batch
        rows = [(e.mac, e.stage, e.source, dumps(e.detail), e.at, e.server) for e in events]  # _EVENT_COLUMNS
        if rows:
            with self._db.engine.begin() as conn:
                if self._db.dialect == "sqlite":
                    # Rows in a few multi-row statements: the flush runs in a worker thread, which
                    # then waits for the GIL a few times, not after every row sqlite steps.
                    for i in range(0, len(rows), CHUNK):
                        part = rows[i:i + CHUNK]
                        conn.exec_driver_sql(_SQLITE_EVENTS + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(part)),
                                             tuple(v for r in part for v in r))
                else:
                    self._db.executemany(conn, _INSERT_EVENT, rows, _EVENT_COLUMNS)
                if self._db.dialect == "postgresql":
                    conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (EVENT_CHANNEL, rows[0][5] or ""))

    def prune(self, before: float, keep_per_node: int, now: float | None = None) -> int:
        """The hourly retention pass. Events older than `before` (unix time) go, and each node's
        beyond its newest `keep_per_node`; so do hardware reports older than `before`, and the
        events of machines only seen (never registered, never reported, no inventory) after
        `seen_keep_days`: a DISCOVER from a random MAC does not stay for months. How many events
        went. One pass over the (mac, at) index per node over the cap."""
        now = time.time() if now is None else now
        other = Event.__table__.alias("reported")
        with self._db.engine.begin() as conn:
            gone: int = conn.execute(delete(Event).where(Event.at < before)).rowcount or 0
            conn.execute(delete(Inventory).where(Inventory.at < before))
            gone += conn.execute(delete(Event).where(
                Event.at < now - self.seen_keep_days * 86400, Event.mac.not_in(select(Node.mac)),
                Event.mac.not_in(select(Inventory.mac)),
                ~exists().where(other.c.mac == Event.mac, other.c.source == "node"))).rowcount or 0
            over = conn.execute(select(Event.mac).group_by(Event.mac)
                                .having(func.count() > keep_per_node)).scalars().all()
            for mac in over:
                cutoff = conn.execute(select(Event.at).where(Event.mac == mac).order_by(Event.at.desc())
                                      .offset(keep_per_node - 1).limit(1)).scalar()
                if cutoff is not None:
                    gone += conn.execute(delete(Event).where(Event.mac == mac, Event.at < cutoff)).rowcount or 0
        return gone

    def last_id(self) -> int:
        with self._db.session() as s:
            return s.scalar(select(func.max(Event.id))) or 0

    def after(self, after: int, not_server: str | None = None, limit: int = 5000) -> list[tuple[int, EventRecord]]:
        """Events with an id above `after`, oldest first, except those `not_server` recorded
        (a server's own reach its watchers directly): how boots served by others are seen."""
        q = select(Event).where(Event.id > after)
        if not_server is not None:
            q = q.where((Event.server.is_(None)) | (Event.server != not_server))
        with self._db.session() as s:
            return [(r.id, _record(r)) for r in s.scalars(q.order_by(Event.id).limit(limit))]

    def of(self, mac: str, limit: int = 200) -> list[EventRecord]:
        """The MAC's newest `limit` events, oldest first."""
        with self._db.session() as s:
            rows = s.scalars(
                select(Event)
                .where(Event.mac == normalize_mac(mac))
                .order_by(Event.at.desc(), Event.id.desc())
                .limit(limit)
            )
            out = [_record(r) for r in rows]
        out.reverse()
        return out

    def recent(self, limit: int, macs: Collection[str] | None = None) -> dict[str, list[EventRecord]]:
        """Each MAC's newest `limit` events (oldest first), for every MAC or those of `macs`,
        in one query: the status page and the node list cost the same at 50 MACs or 5,000."""
        newest = func.row_number().over(partition_by=Event.mac, order_by=(Event.at.desc(), Event.id.desc()))
        q = select(Event, newest.label("n"))
        if macs is not None:
            q = q.where(Event.mac.in_(list(macs)))
        sub = q.subquery()
        out: dict[str, list[EventRecord]] = {}
        with self._db.session() as s:
            for r in s.execute(select(sub).where(sub.c.n <= limit).order_by(sub.c.mac, sub.c.at, sub.c.id)):
                out.setdefault(r.mac, []).append(EventRecord(mac=r.mac, stage=r.stage, at=r.at, source=r.source,
                                                             detail=r.detail or {}, server=r.server))
        return out


def _record(r: Event) -> EventRecord:
    return EventRecord(mac=r.mac, stage=r.stage, at=r.at, source=r.source, detail=r.detail or {}, server=r.server)
