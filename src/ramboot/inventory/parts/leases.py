"""Leases: the conditional binds of several servers, the lease journal of one, the reads, DHCPv6.

Every call is one short transaction. Alone on a SQLite file the DHCP server's
batches go to the lease journal (`..lease_journal`) instead, and the leases
table catches up (`checkpoint()`) within `CHECKPOINT_EVERY` seconds and before
every read of it. On PostgreSQL each committed batch is also NOTIFYed on
`LEASE_CHANNEL` (`notify_payloads`/`parse_notify`), so the other servers'
cores learn it within milliseconds. The asyncio side (the batching window,
the checkpoint timer, following the other servers) is `..lease_commit`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from ...macaddr import normalize_mac
from ..lease_journal import Changes, JournalLocked, LeaseJournal
from ..models import Lease, Lease6
from ..records import Lease6Record, LeaseRecord
from .db import CHUNK, Db, StoreOpenError

LEASE_CHANNEL = "ramboot_leases"  # PostgreSQL NOTIFY channel: every committed lease change, as JSON
_NOTIFY_BYTES = 7000  # PostgreSQL's payload limit is 8000 bytes


@dataclass
class LeaseCommit:
    """What a lease batch did. `lost`: addresses whose bind the database refused (another
    client holds them unexpired, or the client holds another address there); `holders`:
    the leases that beat them, for the DHCP core to learn."""

    lost: set[str] = field(default_factory=set)
    holders: list[LeaseRecord] = field(default_factory=list)


def notify_payloads(sender: str, written: list[LeaseRecord], deleted: list[tuple[str, str | None]]) -> list[str]:
    """A batch's changes as `LEASE_CHANNEL` payloads, each under PostgreSQL's limit:
    {"from": sender, "l": [[ip, key, mac, expires, client_id, hostname, uuid] | [ip, key|null]]}."""
    payloads: list[str] = []
    cur: list[list[Any]] = []
    size = 0
    items: list[list[Any]] = [[r.ip, r.key, r.mac, r.expires, r.client_id, r.hostname, r.uuid] for r in written]
    items += [[ip, key] for ip, key in deleted]
    for it in items:
        enc = json.dumps(it, separators=(",", ":"))
        if cur and size + len(enc) > _NOTIFY_BYTES:
            payloads.append(json.dumps({"from": sender, "l": cur}, separators=(",", ":")))
            cur, size = [], 0
        cur.append(it)
        size += len(enc) + 1
    if cur:
        payloads.append(json.dumps({"from": sender, "l": cur}, separators=(",", ":")))
    return payloads


def parse_notify(payload: str) -> tuple[str, list[LeaseRecord], list[tuple[str, str | None]]]:
    """A `LEASE_CHANNEL` payload: (sender, written leases, deleted (ip, key))."""
    msg = json.loads(payload)
    written, deleted = [], []
    for it in msg.get("l", ()):
        if len(it) == 7:
            written.append(LeaseRecord(key=it[1], ip=it[0], mac=it[2], expires=it[3], client_id=it[4],
                                       hostname=it[5], uuid=it[6]))
        elif len(it) == 2:
            deleted.append((it[0], it[1]))
    return str(msg.get("from", "")), written, deleted


class _Journaled:
    """A leases table with the lease journal of one server on SQLite in front (lease_journal.py):
    IPv4's `leases` and DHCPv6's `leases6`, each with a journal file of its own."""

    SUFFIX = ""  # the journal file: the SQLite file's name and this

    def __init__(self, db: Db):
        self._db = db
        self._journal: LeaseJournal | None = None
        self._checkpoint_lock = threading.Lock()
        self._recover_journal()

    TABLE = ""  # the leases table the journal writes through to

    def _apply_changes(self, changes: Changes) -> None:
        """The journal's changes, written as the authority in a few statements (SQLite): the rows of
        every address and every key written go, then each key's last row goes in. Few statements,
        so the worker thread doing it takes the GIL back a few times, not once per row."""
        if not changes:
            return
        recs = _last_rows(changes)
        with self._db.engine.begin() as conn:
            for column, values in (("ip", list(changes.by_ip)), ("key", sorted(changes.keys))):
                for i in range(0, len(values), CHUNK):
                    part = values[i:i + CHUNK]
                    conn.exec_driver_sql(f"DELETE FROM {self.TABLE} WHERE {column} IN ({', '.join('?' * len(part))})",
                                         tuple(part))
            for i in range(0, len(recs), CHUNK):
                self._insert(conn, recs[i:i + CHUNK])

    def _insert(self, conn: Connection, chunk: list[LeaseRecord]) -> None:
        raise NotImplementedError

    # -- the lease journal (one server on SQLite; lease_journal.py) --------
    def _journal_path(self) -> Path | None:
        url = self._db.url
        if not url.startswith("sqlite:///"):
            return None
        db = url.removeprefix("sqlite:///")
        return Path(db + self.SUFFIX) if db and db != ":memory:" else None

    def _recover_journal(self) -> None:
        """What a killed server appended and the table missed, taken in now, unless a server runs."""
        path = self._journal_path()
        if path is None or not any(path.parent.glob(path.name + "*")):
            return
        try:
            j = LeaseJournal(path, wait_tries=0)
        except (JournalLocked, OSError):
            return  # a running server holds it, and keeps the table in step itself
        try:
            self._apply_changes(j.leftover())
            j.forget_leftovers()
        finally:
            j.close()

    @property
    def journaled(self) -> bool:
        """The DHCP server's batches are appended to the journal (see `open_journal`)."""
        return self._journal is not None

    @property
    def journal_pending(self) -> bool:
        """The journal holds changes the leases table does not have yet."""
        return self._journal is not None and bool(self._journal.pending)

    def open_journal(self) -> bool:
        """The DHCP server's call: alone on a SQLite file, its lease batches go to the journal from now on.
        A second server on the same file is refused in one line. False: no journal here (PostgreSQL, memory)."""
        if self._journal is not None:
            return True
        path = self._journal_path()
        if path is None or self._db.shared:
            return False
        try:
            j = LeaseJournal(path)
        except JournalLocked as e:
            raise StoreOpenError(str(e)) from None
        self._apply_changes(j.leftover())
        j.forget_leftovers()
        self._journal = j
        return True

    def checkpoint(self) -> None:
        """The leases table takes what the journal holds (any thread; the DHCP server's worker
        does it every CHECKPOINT_EVERY seconds, and every read of the leases first)."""
        j = self._journal
        if j is None or not j.pending:
            return
        with self._checkpoint_lock:
            changes = j.take()
            if not changes:
                return
            try:
                self._apply_changes(changes)
            except Exception:
                j.give_back()
                raise
            j.taken()

    def close(self) -> None:
        if self._journal is not None:
            self.checkpoint()
            self._journal.close()
            self._journal = None


class LeaseRepo(_Journaled):
    SUFFIX = ".leases-journal"
    TABLE = "leases"

    def __init__(self, db: Db):
        super().__init__(db)
        self.v6 = Lease6Repo(db)

    def close(self) -> None:
        super().close()
        self.v6.close()

    def _insert(self, conn: Connection, chunk: list[LeaseRecord]) -> None:
        now = time.time()
        params: list[Any] = []
        for r in chunk:
            params += [r.ip, r.key, r.mac, r.expires, r.client_id, r.hostname, r.uuid, now]
        conn.exec_driver_sql(
            "INSERT INTO leases (ip, key, mac, expires, client_id, hostname, uuid, updated) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)), tuple(params))

    # -- writes --------------------------------------------------------------
    def save(self, upserts: Iterable[LeaseRecord], deletes: Iterable[str] = (), *,
             moved: Mapping[str, str] | None = None, owners: Mapping[str, str] | None = None,
             now: float | None = None, sender: str = "") -> LeaseCommit:
        """Write a batch of lease changes in one transaction (group commit); what was refused comes back.

        The store writes what the DHCP core decided, with the core's rule: one
        lease per lease key (`LeaseRecord.key`). Several servers may share the
        database, each with its own core, so every bind is conditional (one
        statement for the batch, docs/decisions.md "Several servers"): an address
        is written only if nobody holds it, its holder is the same key, or its
        lease has expired; a key moves off another unexpired address only if the
        core knew it held that one (`moved`: key -> the address it leaves).
        `owners` (address -> key) makes a delete conditional on the holder.
        On PostgreSQL the written rows are also NOTIFYed on `LEASE_CHANNEL`.

        `moved=None` (the default, for the CLI and tests): the caller is the authority, and
        every write goes through as before (a key's other addresses go, an address is
        taken over). The DHCP server always passes `moved` (empty or not): conditional.
        With the lease journal open (one server on SQLite: its core is the only authority),
        the server's batches are appended there instead, and nothing is refused.
        """
        if self._journal is not None and moved is not None:
            self._journal.append(list(upserts), list(deletes), moved)
            return LeaseCommit()
        self.checkpoint()  # the authority's write lands after what the journal holds
        return self._save_db(upserts, deletes, moved=moved, owners=owners, now=now, sender=sender)

    def _save_db(self, upserts: Iterable[LeaseRecord], deletes: Iterable[str], *,
                 moved: Mapping[str, str] | None, owners: Mapping[str, str] | None,
                 now: float | None, sender: str) -> LeaseCommit:
        now = time.time() if now is None else now
        authority = moved is None
        moved = moved or {}
        owners = owners or {}
        rows: dict[str, LeaseRecord] = {}  # ip -> the batch's last word on it
        ip_of_key: dict[str, str] = {}
        dropped: dict[str, str] = {}  # ip -> key: written earlier in this batch, then moved
        for rec in upserts:
            prev = ip_of_key.get(rec.key)
            if prev is not None and prev != rec.ip and prev in rows and rows[prev].key == rec.key:
                del rows[prev]
                dropped[prev] = rec.key
            old = rows.get(rec.ip)
            if old is not None and old.key != rec.key and ip_of_key.get(old.key) == rec.ip:
                del ip_of_key[old.key]
            ip_of_key[rec.key] = rec.ip
            dropped.pop(rec.ip, None)
            rows[rec.ip] = rec
        gone: list[dict[str, str | None]] = [{"d_ip": ip, "d_key": owners.get(ip)} for ip in deletes]
        gone += [{"d_ip": ip, "d_key": k} for ip, k in dropped.items()]
        # Rows in one order (by address) on every server, so two batches lock them in the same
        # order; a deadlock that remains (two indexes) is retried, the batch is all or nothing.
        gone.sort(key=lambda g: g["d_ip"] or "")
        recs = sorted(rows.values(), key=lambda r: r.ip)
        for attempt in range(5):
            try:
                out = self._save_once(gone, recs, ip_of_key, moved, now, sender, authority)
                break
            except OperationalError as e:
                if getattr(e.orig, "sqlstate", None) not in ("40P01", "40001") or attempt == 4:
                    raise
                time.sleep(0.002 * (attempt + 1))
        if out.lost:
            keys = [rows[ip].key for ip in out.lost]
            with self._db.session() as s:
                out.holders = [_lease_record(r) for r in s.scalars(
                    select(Lease).where((Lease.ip.in_(list(out.lost))) | (Lease.key.in_(keys))))]
        return out

    def _save_once(self, gone: list[dict[str, str | None]], recs: list[LeaseRecord], ip_of_key: dict[str, str],
                   moved: Mapping[str, str], now: float, sender: str, authority: bool) -> LeaseCommit:
        out = LeaseCommit()
        expired_before = math.inf if authority else now  # the authority's writes find everything "expired"
        with self._db.engine.begin() as conn:
            if gone:
                self._db.executemany(conn, _DELETE_LEASE_IP_KEY, gone)
            if recs:
                # A key leaves the address its core knew it held, and any expired one.
                leave = [{"d_key": k, "d_ip": ip, "d_from": moved.get(k, ip), "d_now": expired_before}
                         for k, ip in sorted(ip_of_key.items())]
                self._db.executemany(conn, _DELETE_LEASE_KEY, leave)
                written = self._bind(conn, recs, now, expired_before)
                out.lost = {r.ip for r in recs} - written
            if self._db.dialect == "postgresql" and (recs or gone):
                payloads = notify_payloads(sender, [r for r in recs if r.ip not in out.lost],
                                           [(str(g["d_ip"]), g["d_key"]) for g in gone])
                if payloads:  # delivered when (and only if) the batch commits
                    conn.exec_driver_sql("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                                         (LEASE_CHANNEL, payloads))
        return out

    def _bind(self, conn: Connection, recs: list[LeaseRecord], now: float, expired_before: float) -> set[str]:
        """The conditional upsert, one statement per 500 rows; the addresses it wrote."""
        written: set[str] = set()
        pg = self._db.dialect == "postgresql"
        for i in range(0, len(recs), 500):
            chunk = recs[i:i + 500]
            params: list[Any] = []
            for r in chunk:
                params += [r.ip, r.key, r.mac, r.expires, r.client_id, r.hostname, r.uuid, now]
            if pg:
                one = "(%s::varchar, %s::varchar, %s::varchar, %s::float8, %s::varchar, %s::varchar, %s::varchar," \
                      " %s::float8)"
                sql = _PG_BIND.format(values=", ".join([one] * len(chunk)))
            else:
                sql = _SQLITE_BIND.format(values=", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)))
            params.append(expired_before)
            if not pg:  # one server, one writer: the NOT EXISTS guard leaves the key index nothing to refuse
                written.update(row[0] for row in conn.exec_driver_sql(sql, tuple(params)))
                continue
            try:
                with conn.begin_nested():
                    res = conn.exec_driver_sql(sql, tuple(params))
                    written.update(row[0] for row in res)
            except IntegrityError:
                # Another server moved one of these keys at this very moment (the unique
                # key index said no): row by row, so only that one is refused.
                for r in chunk:
                    try:
                        with conn.begin_nested():
                            written.update(self._bind(conn, [r], now, expired_before))
                    except IntegrityError:
                        pass
        return written

    # -- reads ---------------------------------------------------------------
    def load(self) -> list[LeaseRecord]:
        self.checkpoint()
        with self._db.session() as s:
            return [_lease_record(r) for r in s.scalars(select(Lease))]

    def since(self, t: float) -> list[LeaseRecord]:
        """Leases written at or after unix time `t` (another server's, too)."""
        self.checkpoint()
        with self._db.session() as s:
            return [_lease_record(r) for r in s.scalars(select(Lease).where(Lease.updated >= t))]

    def _v6_where(self, cond: ColumnElement[bool], now: float) -> list[LeaseRecord]:
        """IPv6 leases as the access rule reads leases: the machine's own (`hw:` + its MAC),
        the MAC being what the DHCPv6 core learned it by (option 79, EUI-64 source, DUID)."""
        self.v6.checkpoint()
        with self._db.session() as s:
            return [LeaseRecord(key="hw:" + r.mac, ip=r.ip, mac=r.mac, expires=r.expires)
                    for r in s.scalars(select(Lease6).where(cond, Lease6.expires > now))]

    def leases_of(self, mac: str, now: float | None = None) -> list[LeaseRecord]:
        """Every unexpired lease with this chaddr (one per client id): the access rule picks the node's own."""
        now = time.time() if now is None else now
        self.checkpoint()
        with self._db.session() as s:
            v4 = [_lease_record(r) for r in s.scalars(
                select(Lease).where(Lease.mac == normalize_mac(mac), Lease.expires > now))]
        return v4 + self._v6_where(Lease6.mac == normalize_mac(mac), now)

    def active(self, macs: Collection[str] | None = None, now: float | None = None) -> list[LeaseRecord]:
        """The unexpired leases of these MACs, or of every MAC: one query, for the nodes' views."""
        now = time.time() if now is None else now
        self.checkpoint()
        q = select(Lease).where(Lease.expires > now)
        if macs is not None:
            q = q.where(Lease.mac.in_([normalize_mac(m) for m in macs]))
        with self._db.session() as s:
            return [_lease_record(r) for r in s.scalars(q)]

    def lease_at(self, ip: str, now: float | None = None) -> LeaseRecord | None:
        """The unexpired lease on an address, if any."""
        now = time.time() if now is None else now
        if ":" in ip:
            found = self._v6_where(Lease6.ip == ip, now)
            return found[0] if found else None
        self.checkpoint()
        with self._db.session() as s:
            r = s.scalar(select(Lease).where(Lease.ip == ip, Lease.expires > now))
            return _lease_record(r) if r else None

    # -- DHCPv6 leases (the `v6` table's; kept here for the CLI and tests) ----------
    def load6(self) -> list[Lease6Record]:
        return self.v6.load()

    def save6(self, upserts: Iterable[Lease6Record], deletes: Iterable[str] = ()) -> None:
        """A batch written as the authority (the CLI's and tests' call; the server's go through `v6.save`)."""
        self.v6.save(upserts, deletes)


class Lease6Repo(_Journaled):
    """DHCPv6 leases (`leases6`). The DHCPv6 core is the one authority on them (one server), so a
    batch needs no conditional binds: alone on SQLite it is one append to its own journal, and
    the table catches up as IPv4's does (the same `LeaseCommitter` drives both)."""

    SUFFIX = ".leases6-journal"
    TABLE = "leases6"

    def load(self) -> list[Lease6Record]:
        self.checkpoint()
        with self._db.session() as s:
            return [Lease6Record(r.key, r.ip, r.mac, r.expires) for r in s.scalars(select(Lease6))]

    def save(self, upserts: Iterable[Lease6Record], deletes: Iterable[str] = (), *,
             moved: Mapping[str, str] | None = None, owners: Mapping[str, str] | None = None,
             now: float | None = None, sender: str = "") -> LeaseCommit:
        """One batch from the DHCPv6 core: one lease per key and per address, as the core keeps them.
        With the journal open and `moved` given (the server's call), one append; else one transaction.
        Nothing is ever refused (`owners`, `now` and `sender` are IPv4's several-server arguments)."""
        if self._journal is not None and moved is not None:
            self._journal.append(list(upserts), list(deletes), moved)
            return LeaseCommit()
        self.checkpoint()
        changes = Changes()
        changes.add(list(upserts), list(deletes), {})
        if not changes:
            return LeaseCommit()
        recs = _last_rows(changes)
        with self._db.engine.begin() as conn:  # any dialect (PostgreSQL has no journal): a statement per kind
            conn.execute(delete(Lease6).where(Lease6.ip.in_(list(changes.by_ip))))
            if recs:
                conn.execute(delete(Lease6).where(Lease6.key.in_(sorted(changes.keys))))
                conn.execute(insert(Lease6), [{"ip": r.ip, "key": r.key, "mac": normalize_mac(r.mac),
                                               "expires": r.expires} for r in recs])
        return LeaseCommit()

    def _insert(self, conn: Connection, chunk: list[LeaseRecord]) -> None:
        params: list[Any] = []
        for r in chunk:
            params += [r.ip, r.key, normalize_mac(r.mac), r.expires]
        conn.exec_driver_sql("INSERT INTO leases6 (ip, key, mac, expires) VALUES "
                             + ", ".join(["(?, ?, ?, ?)"] * len(chunk)), tuple(params))


def _last_rows(changes: Changes) -> list[LeaseRecord]:
    """Each key's last row (one lease per key), an address once (its last holder)."""
    last: dict[str, LeaseRecord] = {}
    for rec in changes.by_ip.values():
        if rec is not None:
            last.pop(rec.key, None)
            last[rec.key] = rec
    return list(last.values())


_LEASES = cast(Table, Lease.__table__)
_L = _LEASES.c
# An address goes; with a key, only if that key still holds it (another server may have rebound it).
_DELETE_LEASE_IP_KEY = delete(_LEASES).where(
    _L.ip == bindparam("d_ip"), func.coalesce(bindparam("d_key"), _L.key) == _L.key
)
# A key's other addresses go: the one its core knew it left, and expired ones. An unexpired
# address the core did not know of (another server bound it a moment ago) stays, and blocks the bind.
_DELETE_LEASE_KEY = delete(_LEASES).where(
    _L.key == bindparam("d_key"), _L.ip != bindparam("d_ip"),
    (_L.ip == bindparam("d_from")) | (_L.expires <= bindparam("d_now")),
)
# The bind, one statement per batch: insert, or take over the address only if it is this key's
# or its lease expired; never while the key holds another address. RETURNING: what was written.
_BIND_SET = ("key = excluded.key, mac = excluded.mac, expires = excluded.expires, client_id = excluded.client_id,"
             " hostname = excluded.hostname, uuid = excluded.uuid, updated = excluded.updated")
_PG_BIND = (
    "INSERT INTO leases AS l (ip, key, mac, expires, client_id, hostname, uuid, updated)"
    " SELECT v.ip, v.key, v.mac, v.expires, v.client_id, v.hostname, v.uuid, v.updated"
    " FROM (VALUES {values}) AS v(ip, key, mac, expires, client_id, hostname, uuid, updated)"
    " WHERE NOT EXISTS (SELECT 1 FROM leases o WHERE o.key = v.key AND o.ip <> v.ip)"
    " ON CONFLICT (ip) DO UPDATE SET " + _BIND_SET +
    " WHERE l.key = excluded.key OR l.expires <= %s RETURNING l.ip"
)
_SQLITE_BIND = (
    "INSERT INTO leases AS l (ip, key, mac, expires, client_id, hostname, uuid, updated)"
    " SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8"
    " FROM (VALUES {values}) AS v"
    " WHERE NOT EXISTS (SELECT 1 FROM leases o WHERE o.key = v.column2 AND o.ip <> v.column1)"
    " ON CONFLICT (ip) DO UPDATE SET " + _BIND_SET +
    " WHERE l.key = excluded.key OR l.expires <= ? RETURNING ip"
)


def _lease_record(r: Lease) -> LeaseRecord:
    return LeaseRecord(key=r.key, ip=r.ip, mac=r.mac, expires=r.expires, client_id=r.client_id, hostname=r.hostname,
                       uuid=r.uuid)
