"""The store: SQLAlchemy 2 over SQLite by default, so PostgreSQL is a URL change.

Opening a Store runs the schema migrations to head (`migrate.py`).

Synchronous and short: every call is one small transaction. The DHCP server
batches lease writes itself (`save_leases`) so durability costs one commit per
batch, not per packet.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable

from sqlalchemy import bindparam, create_engine, delete, event, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from ..macaddr import normalize_mac
from ..proto.dhcp_core import LeaseRecord
from .migrate import upgrade_to_head
from .models import Event, Inventory, Lease, Node, Profile, Secret
from .records import EventRecord, NodeSpec, ProfileSpec

__all__ = ["EventRecord", "LeaseRecord", "NodeSpec", "ProfileSpec", "Store", "StoreError"]

_NODE_FIELDS = ("image", "hostname", "ip", "loader", "uuid", "kernel_args", "labels", "discovered", "ssh_keys",
                "profiles", "overlays")
_PROFILE_FIELDS = ("image", "kernel_args", "ssh_keys", "overlays", "labels")


class StoreError(Exception):
    pass


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        # WAL + NORMAL: a committed transaction survives the process being
        # killed (kill -9); only a power loss may drop the last commits.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()


def _private_file(path: str) -> None:
    """The database holds node secrets (host keys): create it 0600, and keep it so.
    SQLite gives its -wal and -shm files the database file's mode."""
    if not path or path == ":memory:":
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
    except OSError:
        pass  # a read-only or missing directory: the engine will say so


class Store:
    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            _private_file(url.removeprefix("sqlite:///"))
        self.engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            _sqlite_pragmas(self.engine)
        upgrade_to_head(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._compiled: dict[tuple, tuple[str, tuple[str, ...] | None]] = {}

    def close(self) -> None:
        self.engine.dispose()

    # -- nodes -----------------------------------------------------------
    def put_node(self, spec: NodeSpec) -> NodeSpec:
        mac = normalize_mac(spec.mac)
        with self._session.begin() as s:
            if spec.ip:
                other = s.scalar(select(Node).where(Node.ip == spec.ip, Node.mac != mac))
                if other is not None:
                    raise StoreError(f"address {spec.ip} is already fixed for {other.mac}")
            row = s.get(Node, mac) or Node(mac=mac)
            for k in _NODE_FIELDS:
                setattr(row, k, getattr(spec, k))
            s.add(row)
        return self.get_node(mac)  # type: ignore[return-value]

    def get_node(self, mac: str) -> NodeSpec | None:
        with self._session() as s:
            row = s.get(Node, normalize_mac(mac))
            return _node_spec(row) if row else None

    def node_by_uuid(self, uuid: str) -> NodeSpec | None:
        with self._session() as s:
            row = s.scalar(select(Node).where(Node.uuid == uuid))
            return _node_spec(row) if row else None

    def list_nodes(self) -> list[NodeSpec]:
        with self._session() as s:
            return [_node_spec(r) for r in s.scalars(select(Node).order_by(Node.mac))]

    def remove_node(self, mac: str) -> bool:
        with self._session.begin() as s:
            return s.execute(delete(Node).where(Node.mac == normalize_mac(mac))).rowcount > 0

    # -- profiles ----------------------------------------------------------
    def put_profile(self, spec: ProfileSpec) -> ProfileSpec:
        with self._session.begin() as s:
            row = s.get(Profile, spec.name) or Profile(name=spec.name)
            for k in _PROFILE_FIELDS:
                setattr(row, k, getattr(spec, k))
            s.add(row)
        return spec

    def get_profile(self, name: str) -> ProfileSpec | None:
        with self._session() as s:
            row = s.get(Profile, name)
            return _profile_spec(row) if row else None

    def list_profiles(self) -> list[ProfileSpec]:
        with self._session() as s:
            return [_profile_spec(r) for r in s.scalars(select(Profile).order_by(Profile.name))]

    def remove_profile(self, name: str) -> bool:
        with self._session.begin() as s:
            return s.execute(delete(Profile).where(Profile.name == name)).rowcount > 0

    # -- secrets -------------------------------------------------------------
    def secret(self, name: str, make: Callable[[], str]) -> str:
        """The secret called `name`, made with `make()` and kept the first time it is asked for.

        Race-safe across servers on one database: of two that make it at once, the
        first insert wins and both return the kept value.
        """
        with self._session() as s:
            row = s.get(Secret, name)
            if row is not None:
                return row.value
        value = make()
        try:
            with self._session.begin() as s:
                s.add(Secret(name=name, value=value))
        except IntegrityError:
            pass
        with self._session() as s:
            row = s.get(Secret, name)
            assert row is not None
            return row.value

    def set_secret(self, name: str, value: str) -> None:
        with self._session.begin() as s:
            row = s.get(Secret, name) or Secret(name=name)
            row.value = value
            s.add(row)

    # -- leases ----------------------------------------------------------
    def load_leases(self) -> list[LeaseRecord]:
        with self._session() as s:
            return [_lease_record(r) for r in s.scalars(select(Lease))]

    def save_leases(self, upserts: Iterable[LeaseRecord], deletes: Iterable[str] = ()) -> None:
        """Write a batch of lease changes in one transaction (group commit).

        The store writes what the DHCP core decided, with the core's rule: one
        lease per lease key (`LeaseRecord.key`). Deletes by address first, then
        each upsert in order; a key's other addresses go. Core executemany
        statements, not ORM objects: a batch of hundreds costs a few statements.
        """
        rows: dict[str, dict] = {}  # ip -> row; a later upsert for a key replaces its earlier one
        ip_of_key: dict[str, str] = {}
        dropped: dict[str, None] = {}
        for rec in upserts:
            prev = ip_of_key.get(rec.key)
            if prev is not None and prev != rec.ip and rows.get(prev, {}).get("key") == rec.key:
                del rows[prev]
                dropped[prev] = None  # written, then moved: whatever was stored there goes too
            old = rows.get(rec.ip)
            if old is not None and old["key"] != rec.key and ip_of_key.get(old["key"]) == rec.ip:
                del ip_of_key[old["key"]]
            ip_of_key[rec.key] = rec.ip
            dropped.pop(rec.ip, None)
            rows[rec.ip] = {"ip": rec.ip, "key": rec.key, "mac": rec.mac, "expires": rec.expires,
                            "client_id": rec.client_id, "hostname": rec.hostname, "uuid": rec.uuid}
        gone = [{"d_ip": ip} for ip in (*deletes, *dropped)]
        with self.engine.begin() as conn:
            if gone:
                self._executemany(conn, _DELETE_LEASE_IP, gone)
            if rows:
                # The keys' other stored leases; the rows written below are already one per key.
                self._executemany(conn, _DELETE_LEASE_KEY, [{"d_key": k, "d_ip": ip} for k, ip in ip_of_key.items()])
                upsert = self._lease_upsert()
                if upsert is None:  # a dialect without ON CONFLICT: clear the addresses, then insert
                    self._executemany(conn, _DELETE_LEASE_IP, [{"d_ip": ip} for ip in rows])
                    upsert = insert(Lease.__table__)
                self._executemany(conn, upsert, list(rows.values()), _LEASE_COLUMNS)

    def _executemany(self, conn, stmt, rows: list, columns: tuple[str, ...] | None = None) -> None:
        """`stmt` compiled once for this dialect, then run as one DBAPI executemany.

        The hot batches (leases, events) skip SQLAlchemy's per-call compilation and
        per-row bind processing; the rows must hold driver-ready values, as dicts or
        as tuples in `columns` order.
        """
        key = (id(stmt), columns)
        hit = self._compiled.get(key)
        if hit is None:
            c = stmt.compile(dialect=self.engine.dialect, column_keys=list(columns) if columns else None,
                             for_executemany=True)
            hit = self._compiled[key] = (str(c), tuple(c.positiontup) if c.positional else None)
        sql, order = hit
        if rows and isinstance(rows[0], tuple):
            if order is None:
                rows = [dict(zip(columns, r, strict=True)) for r in rows]  # type: ignore[arg-type]
            elif order != columns:
                idx = [columns.index(k) for k in order]  # type: ignore[union-attr]
                rows = [tuple([r[i] for i in idx]) for r in rows]
        elif order:
            rows = [tuple([r[k] for k in order]) for r in rows]
        conn.exec_driver_sql(sql, rows)

    def _lease_upsert(self):
        """INSERT ... ON CONFLICT (ip) DO UPDATE for SQLite and PostgreSQL; None elsewhere."""
        if not hasattr(self, "_upsert_stmt"):
            table = Lease.__table__
            name = self.engine.dialect.name
            stmt = None
            if name in ("sqlite", "postgresql"):
                if name == "sqlite":
                    from sqlalchemy.dialects.sqlite import insert as dialect_insert
                else:
                    from sqlalchemy.dialects.postgresql import insert as dialect_insert
                ins = dialect_insert(table)
                stmt = ins.on_conflict_do_update(
                    index_elements=[table.c.ip],
                    set_={c: ins.excluded[c] for c in ("key", "mac", "expires", "client_id", "hostname", "uuid")},
                )
            self._upsert_stmt = stmt
        return self._upsert_stmt

    def holds_lease(self, mac: str, ip: str, now: float | None = None) -> bool:
        """Whether `ip` holds an unexpired lease for `mac` (a MAC may hold several, one per client id)."""
        now = time.time() if now is None else now
        with self._session() as s:
            return s.scalar(select(Lease.ip).where(Lease.mac == normalize_mac(mac), Lease.ip == ip,
                                                   Lease.expires > now).limit(1)) is not None

    def lease_for_mac(self, mac: str, now: float | None = None) -> LeaseRecord | None:
        """The unexpired lease a MAC holds, if any (node reports are checked against it)."""
        now = time.time() if now is None else now
        with self._session() as s:
            r = s.scalar(
                select(Lease)
                .where(Lease.mac == normalize_mac(mac), Lease.expires > now)
                .order_by(Lease.expires.desc())
                .limit(1)
            )
            return _lease_record(r) if r else None

    # -- events and inventory ---------------------------------------------
    def add_events(self, events: Iterable[EventRecord]) -> None:
        """A batch of events whose MACs are already normalised (EventLog does it as each is recorded)."""
        dumps = json.dumps  # what the JSON column's bind processor does, done here for the batch
        rows = [(e.mac, e.stage, e.source, dumps(e.detail), e.at) for e in events]  # _EVENT_COLUMNS
        if rows:
            with self.engine.begin() as conn:
                self._executemany(conn, _INSERT_EVENT, rows, _EVENT_COLUMNS)

    def events(self, mac: str, limit: int = 200) -> list[EventRecord]:
        with self._session() as s:
            rows = s.scalars(
                select(Event)
                .where(Event.mac == normalize_mac(mac))
                .order_by(Event.at.desc(), Event.id.desc())
                .limit(limit)
            )
            out = [EventRecord(mac=r.mac, stage=r.stage, at=r.at, source=r.source, detail=r.detail or {}) for r in rows]
        out.reverse()
        return out

    def event_macs(self) -> list[str]:
        """Every MAC that has events, registered or not (unknown nodes boot too)."""
        with self._session() as s:
            return list(s.scalars(select(Event.mac).distinct().order_by(Event.mac)))

    def inventory_macs(self) -> list[str]:
        """Every MAC that reported its hardware, registered or not."""
        with self._session() as s:
            return list(s.scalars(select(Inventory.mac).distinct().order_by(Inventory.mac)))

    def add_inventory(self, mac: str, data: dict, at: float | None = None) -> None:
        with self._session.begin() as s:
            s.add(Inventory(mac=normalize_mac(mac), data=data, at=at or time.time()))

    def inventory(self, mac: str) -> dict | None:
        with self._session() as s:
            row = s.scalar(
                select(Inventory).where(Inventory.mac == normalize_mac(mac)).order_by(Inventory.at.desc()).limit(1)
            )
            return dict(row.data) if row else None

    def inventory_history(self, mac: str, limit: int = 50) -> list[tuple[float, dict]]:
        """Past hardware reports, newest first, as (unix time, report)."""
        with self._session() as s:
            rows = s.scalars(
                select(Inventory).where(Inventory.mac == normalize_mac(mac)).order_by(Inventory.at.desc()).limit(limit)
            )
            return [(r.at, dict(r.data)) for r in rows]


_LEASE_COLUMNS = ("ip", "key", "mac", "expires", "client_id", "hostname", "uuid")
_EVENT_COLUMNS = ("mac", "stage", "source", "detail", "at")  # the table's order: rows pass through as they are
_INSERT_EVENT = insert(Event.__table__)
_DELETE_LEASE_IP = delete(Lease.__table__).where(Lease.__table__.c.ip == bindparam("d_ip"))
_DELETE_LEASE_KEY = delete(Lease.__table__).where(
    Lease.__table__.c.key == bindparam("d_key"), Lease.__table__.c.ip != bindparam("d_ip")
)


def _lease_record(r: Lease) -> LeaseRecord:
    return LeaseRecord(key=r.key, ip=r.ip, mac=r.mac, expires=r.expires, client_id=r.client_id, hostname=r.hostname,
                       uuid=r.uuid)


def _profile_spec(r: Profile) -> ProfileSpec:
    return ProfileSpec(name=r.name, image=r.image, kernel_args=r.kernel_args or "", ssh_keys=list(r.ssh_keys or []),
                       overlays=list(r.overlays or []), labels=dict(r.labels or {}))


def _node_spec(r: Node) -> NodeSpec:
    return NodeSpec(
        mac=r.mac,
        image=r.image,
        hostname=r.hostname,
        ip=r.ip,
        loader=r.loader,
        uuid=r.uuid,
        kernel_args=r.kernel_args or "",
        labels=dict(r.labels or {}),
        discovered=bool(r.discovered),
        ssh_keys=list(r.ssh_keys or []),
        profiles=list(r.profiles or []),
        overlays=list(r.overlays or []),
    )
