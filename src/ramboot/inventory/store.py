"""The store: SQLAlchemy 2 over SQLite by default, so PostgreSQL is a URL change.

Opening a Store runs the schema migrations to head (`migrate.py`).

Synchronous and short: every call is one small transaction. The DHCP server
batches lease writes itself (`save_leases`) so durability costs one commit per
batch, not per packet; alone on SQLite, it appends them to the lease journal
instead (`lease_journal.py`), and the leases table catches up within
`CHECKPOINT_EVERY` seconds and before every read of it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, create_engine, delete, event, exists, func, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from ..config import ConfigError
from ..macaddr import normalize_mac
from ..power.bmc import AutoUnresolved, Bmc, BmcError, resolve_auto
from ..power.bmc import parse as parse_bmc
from ..proto.dhcp6_core import Lease6Record
from ..proto.dhcp_core import LeaseRecord
from .credentials import Credentials
from .lease_journal import CHECKPOINT_EVERY, Changes, JournalLocked, LeaseJournal
from .migrate import upgrade_to_head
from .models import ConsoleLine, Event, Inventory, Lease, Lease6, Node, PowerCount, Profile, Secret, Server
from .records import EventRecord, NodeSpec, ProfileSpec, ServerRecord
from .sealed import PREFIX, Sealer, SealError
from .tpms import Tpms

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["CHECKPOINT_EVERY", "EventRecord", "LeaseCommit", "LeaseRecord", "NodeSpec", "ProfileSpec",
           "ServerRecord", "Store", "StoreError"]

LEASE_CHANNEL = "ramboot_leases"  # PostgreSQL NOTIFY channel: every committed lease change, as JSON
EVENT_CHANNEL = "ramboot_events"  # a batch of events was committed (payload: the server's name)
_NOTIFY_BYTES = 7000  # PostgreSQL's payload limit is 8000 bytes

_NODE_FIELDS = ("image", "hostname", "ip", "loader", "uuid", "kernel_args", "labels", "discovered", "ssh_keys",
                "profiles", "overlays")
_PROFILE_FIELDS = ("image", "kernel_args", "ssh_keys", "overlays", "labels")


class StoreError(Exception):
    pass


class StoreOpenError(StoreError, ConfigError):
    """The database cannot be opened: a config problem, one line for the user."""


@dataclass
class LeaseCommit:
    """What a lease batch did. `lost`: addresses whose bind the database refused (another
    client holds them unexpired, or the client holds another address there); `holders`:
    the leases that beat them, for the DHCP core to learn."""

    lost: set[str] = field(default_factory=set)
    holders: list[LeaseRecord] = field(default_factory=list)


def engine_url(url: str) -> str:
    """`postgresql://` (and `postgres://`) means psycopg 3; anything else as it is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


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
    def __init__(self, url: str, secrets_key: Path | None = None, *, seen_keep_days: float = 1.0,
                 inventory_keep: int = 20):
        """`secrets_key`: the key file that seals the `secrets` table (sealed.py); without one,
        `secret()` is refused. Retention (`prune_events`, `add_inventory`): events of machines only
        seen go after `seen_keep_days`; a node keeps its newest `inventory_keep` hardware reports."""
        self.url = url
        self.seen_keep_days, self.inventory_keep = seen_keep_days, inventory_keep
        if url.startswith("sqlite:///"):
            _private_file(url.removeprefix("sqlite:///"))
        try:
            if url.startswith("sqlite"):
                self.engine = create_engine(url, future=True)
                _sqlite_pragmas(self.engine)
            else:
                self.engine = create_engine(engine_url(url), future=True, pool_size=8, max_overflow=8,
                                            pool_pre_ping=True)
        except (ArgumentError, ImportError, ValueError) as e:
            raise StoreOpenError(f"database.url: cannot use {safe_url(url)!r}: {str(e).splitlines()[0]}") from None
        self.dialect = self.engine.dialect.name
        try:
            upgrade_to_head(self.engine)
        except OperationalError as e:
            self.engine.dispose()
            why = str(e.orig or e).strip().splitlines()
            raise StoreOpenError(f"database.url: cannot open {safe_url(url)}: {why[0] if why else e}") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._compiled: dict[tuple, tuple[str, tuple[str, ...] | None]] = {}
        self._journal: LeaseJournal | None = None
        self._checkpoint_lock = threading.Lock()
        self._recover_journal()
        self.credentials = Credentials(self._session)
        self.tpms = Tpms(self._session)
        self._sealer = Sealer(secrets_key) if secrets_key is not None else None
        try:
            self._seal_plaintext()
        except SealError as e:
            self.engine.dispose()
            raise StoreOpenError(str(e)) from None

    @classmethod
    def for_config(cls, config: Config) -> Store:
        """The store a config names, with its secrets key and retention."""
        return cls(config.database_url, config.secrets_key_path, seen_keep_days=config.database.seen_keep_days,
                   inventory_keep=config.database.inventory_keep_per_node)

    @property
    def shared(self) -> bool:
        """PostgreSQL: other servers may use this database too (LISTEN/NOTIFY works)."""
        return self.dialect == "postgresql"

    def listen_dsn(self) -> str:
        """A libpq connection string for a LISTEN connection of one's own (PostgreSQL only)."""
        u = self.engine.url.set(drivername="postgresql")
        return u.render_as_string(hide_password=False)

    def close(self) -> None:
        if self._journal is not None:
            self.checkpoint_leases()
            self._journal.close()
            self._journal = None
        self.engine.dispose()

    # -- the lease journal (one server on SQLite; lease_journal.py) --------
    def _journal_path(self) -> Path | None:
        if not self.url.startswith("sqlite:///"):
            return None
        db = self.url.removeprefix("sqlite:///")
        return Path(db + ".leases-journal") if db and db != ":memory:" else None

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
        """Lease batches from the DHCP server are appended to the journal (see `open_lease_journal`)."""
        return self._journal is not None

    @property
    def journal_pending(self) -> bool:
        """The journal holds changes the leases table does not have yet."""
        return self._journal is not None and bool(self._journal.pending)

    def open_lease_journal(self) -> bool:
        """The DHCP server's call: alone on a SQLite file, its lease batches go to the journal from now on.
        A second server on the same file is refused in one line. False: no journal here (PostgreSQL, memory)."""
        if self._journal is not None:
            return True
        path = self._journal_path()
        if path is None or self.shared:
            return False
        try:
            j = LeaseJournal(path)
        except JournalLocked as e:
            raise StoreOpenError(str(e)) from None
        self._apply_changes(j.leftover())
        j.forget_leftovers()
        self._journal = j
        return True

    def checkpoint_leases(self) -> None:
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

    def _apply_changes(self, changes: Changes) -> None:
        """The journal's changes, written as the authority in a few statements (SQLite): the rows of
        every address and every key written go, then each key's last row goes in. Few statements,
        so the worker thread doing it takes the GIL back a few times, not once per row."""
        if not changes:
            return
        last: dict[str, LeaseRecord] = {}  # key -> the row it ends with (one lease per key)
        for rec in changes.by_ip.values():
            if rec is not None:
                last.pop(rec.key, None)
                last[rec.key] = rec
        now = time.time()
        with self.engine.begin() as conn:
            for column, values in (("ip", list(changes.by_ip)), ("key", sorted(changes.keys))):
                for i in range(0, len(values), _CHUNK):
                    part = values[i:i + _CHUNK]
                    conn.exec_driver_sql(f"DELETE FROM leases WHERE {column} IN ({', '.join('?' * len(part))})",
                                         tuple(part))
            recs = list(last.values())
            for i in range(0, len(recs), _CHUNK):
                part = recs[i:i + _CHUNK]
                params: list = []
                for r in part:
                    params += [r.ip, r.key, r.mac, r.expires, r.client_id, r.hostname, r.uuid, now]
                conn.exec_driver_sql(
                    "INSERT INTO leases (ip, key, mac, expires, client_id, hostname, uuid, updated) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(part)), tuple(params))

    # -- nodes -----------------------------------------------------------
    def put_node(self, spec: NodeSpec) -> NodeSpec:
        """Replaces what is registered for the node (its boot-once image stays: `set_boot_once`)."""
        mac = normalize_mac(spec.mac)
        bmc = self._keep_bmc(f"bmc:node:{mac}", spec.bmc)
        with self._session.begin() as s:
            if spec.ip:
                other = s.scalar(select(Node).where(Node.ip == spec.ip, Node.mac != mac))
                if other is not None:
                    raise StoreError(f"address {spec.ip} is already fixed for {other.mac}")
            row = s.get(Node, mac) or Node(mac=mac)
            for k in _NODE_FIELDS:
                setattr(row, k, getattr(spec, k))
            row.bmc = bmc
            s.add(row)
        return self.get_node(mac)  # type: ignore[return-value]

    def set_boot_once(self, mac: str, image: str | None, only_if: str | None = None) -> bool:
        """The image of the node's next boot only (None: its own again). `only_if`: change it only
        while it is still that image (two servers consuming one boot-once clear it once)."""
        with self._session.begin() as s:
            q = update(Node).where(Node.mac == normalize_mac(mac))
            if only_if is not None:
                q = q.where(Node.boot_once == only_if)
            return s.execute(q.values(boot_once=image)).rowcount > 0

    # -- BMCs: the URL in the row without its password, the password sealed ------------------
    def _keep_bmc(self, secret: str, url: str | None) -> str | None:
        """Seals the URL's password (a URL without one, or with `***`, keeps the sealed one) and
        returns the URL to keep in the row."""
        if not url:
            self._drop_secret(secret)
            return None
        try:
            bmc = parse_bmc(url)
        except BmcError as e:
            raise StoreError(f"--bmc: {e}") from None
        if bmc.password is not None:
            self.set_secret(secret, bmc.password)
        return bmc.redacted()

    def _drop_secret(self, name: str) -> None:
        with self._session.begin() as s:
            s.execute(delete(Secret).where(Secret.name == name))

    def _bmc_of(self, mac: str) -> tuple[str, str] | None:
        """(the secret's name, the URL without password) of the node's BMC: its own, else its
        last profile's that has one."""
        spec = self.get_node(mac)
        if spec is None:
            return None
        if spec.bmc:
            return f"bmc:node:{spec.mac}", spec.bmc
        for name in reversed(spec.profiles):
            p = self.get_profile(name)
            if p is not None and p.bmc:
                return f"bmc:profile:{name}", p.bmc
        return None

    def bmc(self, mac: str) -> Bmc | None:
        """The node's BMC with its password (the node's own, else its last profile's that has one);
        `@auto` resolved from its latest hardware report (AutoUnresolved when it has none)."""
        found = self._bmc_of(mac)
        if found is None:
            return None
        bmc = resolve_auto(parse_bmc(found[1]), self.inventory(mac))
        if not bmc.needs_password:
            return bmc
        with self._session() as s:
            row = s.get(Secret, found[0])
            return bmc.with_password(self._sealing().open(found[0], row.value) if row is not None else None)

    def bmc_in_use(self, mac: str) -> str | None:
        """The URL the node's BMC is reached at, password as ***: `@auto` resolved (or kept when the
        node has reported none); None without a BMC. Opens no secret."""
        found = self._bmc_of(mac)
        if found is None:
            return None
        bmc = parse_bmc(found[1])
        try:
            return resolve_auto(bmc, self.inventory(mac)).redacted()
        except AutoUnresolved:
            return bmc.redacted()

    def count_power(self, action: str, result: str) -> None:
        with self._session.begin() as s:
            row = s.get(PowerCount, (action, result), with_for_update=True) or PowerCount(action=action, result=result,
                                                                                         n=0)
            row.n = (row.n or 0) + 1
            s.add(row)

    def add_console_lines(self, mac: str, lines: list[tuple[float, str]], keep: int) -> None:
        """A node's console lines; its oldest beyond `keep` go."""
        if not lines:
            return
        mac = normalize_mac(mac)
        with self._session.begin() as s:
            s.execute(insert(ConsoleLine), [{"mac": mac, "at": at, "line": line[:200]} for at, line in lines])
            cut = s.scalar(select(ConsoleLine.id).where(ConsoleLine.mac == mac).order_by(ConsoleLine.id.desc())
                           .offset(keep).limit(1))
            if cut is not None:
                s.execute(delete(ConsoleLine).where(ConsoleLine.mac == mac, ConsoleLine.id <= cut))

    def console_lines(self, mac: str, since: float, limit: int = 2000) -> list[tuple[float, str]]:
        """The node's console lines from `since` on, oldest first (at most the newest `limit`)."""
        q = (select(ConsoleLine.at, ConsoleLine.line)
             .where(ConsoleLine.mac == normalize_mac(mac), ConsoleLine.at >= since)
             .order_by(ConsoleLine.id.desc()).limit(limit))
        with self._session() as s:
            return [(r.at, r.line) for r in reversed(s.execute(q).all())]

    def power_counts(self) -> dict[tuple[str, str], int]:
        with self._session() as s:
            return {(r.action, r.result): r.n for r in s.scalars(select(PowerCount))}

    def get_node(self, mac: str) -> NodeSpec | None:
        with self._session() as s:
            row = s.get(Node, normalize_mac(mac))
            return _node_spec(row) if row else None

    def node_by_uuid(self, uuid: str) -> NodeSpec | None:
        with self._session() as s:
            row = s.scalar(select(Node).where(Node.uuid == uuid))
            return _node_spec(row) if row else None

    def list_nodes(self, macs: Collection[str] | None = None) -> list[NodeSpec]:
        """Every node, or those of `macs`, in one query."""
        q = select(Node).order_by(Node.mac)
        if macs is not None:
            q = q.where(Node.mac.in_(list(macs)))
        with self._session() as s:
            return [_node_spec(r) for r in s.scalars(q)]

    def remove_node(self, mac: str) -> bool:
        mac = normalize_mac(mac)
        with self._session.begin() as s:
            s.execute(delete(Secret).where(Secret.name == f"bmc:node:{mac}"))
            return s.execute(delete(Node).where(Node.mac == mac)).rowcount > 0

    # -- profiles ----------------------------------------------------------
    def put_profile(self, spec: ProfileSpec) -> ProfileSpec:
        bmc = self._keep_bmc(f"bmc:profile:{spec.name}", spec.bmc)
        with self._session.begin() as s:
            row = s.get(Profile, spec.name) or Profile(name=spec.name)
            for k in _PROFILE_FIELDS:
                setattr(row, k, getattr(spec, k))
            row.bmc = bmc
            s.add(row)
        return self.get_profile(spec.name)  # type: ignore[return-value]

    def get_profile(self, name: str) -> ProfileSpec | None:
        with self._session() as s:
            row = s.get(Profile, name)
            return _profile_spec(row) if row else None

    def list_profiles(self) -> list[ProfileSpec]:
        with self._session() as s:
            return [_profile_spec(r) for r in s.scalars(select(Profile).order_by(Profile.name))]

    def remove_profile(self, name: str) -> bool:
        with self._session.begin() as s:
            s.execute(delete(Secret).where(Secret.name == f"bmc:profile:{name}"))
            return s.execute(delete(Profile).where(Profile.name == name)).rowcount > 0

    # -- secrets (sealed at rest: sealed.py) ------------------------------------
    def _seal_plaintext(self) -> None:
        """At open: a wrong or missing key stops here, in one line; rows an older version kept
        in clear are sealed (on SQLite the file is then rewritten, so no clear copy is left in it)."""
        if self._sealer is None:
            return
        with self._session() as s:
            rows = select(Secret.name, Secret.value)
            sealed = s.execute(rows.where(Secret.value.startswith(PREFIX)).limit(1)).first()
            plain = s.execute(rows.where(~Secret.value.startswith(PREFIX))).all()
        if sealed is not None:
            self._sealer.open(sealed.name, sealed.value)
        elif plain or self._sealer.path.exists():
            self._sealer.ready(create=True)  # made at first use; an exposed or malformed key is refused at open
        if not plain:
            return
        with self.engine.begin() as conn:
            for name, value in plain:
                conn.execute(update(Secret).where(Secret.name == name, Secret.value == value)
                             .values(value=self._sealer.seal(name, value)))
        if self.dialect == "sqlite":
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("VACUUM")
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except OperationalError:
                pass  # another process holds the file: the rows are sealed; its free pages go at a later VACUUM

    def _sealing(self) -> Sealer:
        if self._sealer is None:
            raise StoreError("the store was opened without a secrets key ([security] secrets_key)")
        return self._sealer

    def derived_key(self, info: bytes) -> bytes:
        """A key derived from the secrets key for `info` (a TPM-wrapped boot key: tpm_gate.py)."""
        return self._sealing().derive(info)

    def secret(self, name: str, make: Callable[[], str]) -> str:
        """The secret called `name`, made with `make()` and kept (sealed) the first time it is asked for.

        Race-safe across servers on one database: of two that make it at once, the
        first insert wins and both return the kept value.
        """
        sealer = self._sealing()
        with self._session() as s:
            row = s.get(Secret, name)
            if row is not None:
                return sealer.open(name, row.value)
        value = make()
        try:
            with self._session.begin() as s:
                s.add(Secret(name=name, value=sealer.seal(name, value)))
        except IntegrityError:
            pass
        with self._session() as s:
            row = s.get(Secret, name)
            assert row is not None
            return sealer.open(name, row.value)

    def set_secret(self, name: str, value: str) -> None:
        sealed = self._sealing().seal(name, value)
        with self._session.begin() as s:
            row = s.get(Secret, name) or Secret(name=name)
            row.value = sealed
            s.add(row)

    # -- leases ----------------------------------------------------------
    def load_leases(self) -> list[LeaseRecord]:
        self.checkpoint_leases()
        with self._session() as s:
            return [_lease_record(r) for r in s.scalars(select(Lease))]

    def leases_since(self, t: float) -> list[LeaseRecord]:
        """Leases written at or after unix time `t` (another server's, too)."""
        self.checkpoint_leases()
        with self._session() as s:
            return [_lease_record(r) for r in s.scalars(select(Lease).where(Lease.updated >= t))]

    def save_leases(self, upserts: Iterable[LeaseRecord], deletes: Iterable[str] = (), *,
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
        self.checkpoint_leases()  # the authority's write lands after what the journal holds
        return self._save_leases_db(upserts, deletes, moved=moved, owners=owners, now=now, sender=sender)

    def _save_leases_db(self, upserts: Iterable[LeaseRecord], deletes: Iterable[str], *,
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
        gone = [{"d_ip": ip, "d_key": owners.get(ip)} for ip in deletes]
        gone += [{"d_ip": ip, "d_key": k} for ip, k in dropped.items()]
        # Rows in one order (by address) on every server, so two batches lock them in the same
        # order; a deadlock that remains (two indexes) is retried, the batch is all or nothing.
        gone.sort(key=lambda g: g["d_ip"])
        recs = sorted(rows.values(), key=lambda r: r.ip)
        for attempt in range(5):
            try:
                out = self._save_leases_once(gone, recs, ip_of_key, moved, now, sender, authority)
                break
            except OperationalError as e:
                if getattr(e.orig, "sqlstate", None) not in ("40P01", "40001") or attempt == 4:
                    raise
                time.sleep(0.002 * (attempt + 1))
        if out.lost:
            keys = [rows[ip].key for ip in out.lost]
            with self._session() as s:
                out.holders = [_lease_record(r) for r in s.scalars(
                    select(Lease).where((Lease.ip.in_(list(out.lost))) | (Lease.key.in_(keys))))]
        return out

    def _save_leases_once(self, gone: list[dict], recs: list[LeaseRecord], ip_of_key: dict[str, str],
                          moved: Mapping[str, str], now: float, sender: str, authority: bool) -> LeaseCommit:
        out = LeaseCommit()
        expired_before = math.inf if authority else now  # the authority's writes find everything "expired"
        with self.engine.begin() as conn:
            if gone:
                self._executemany(conn, _DELETE_LEASE_IP_KEY, gone)
            if recs:
                # A key leaves the address its core knew it held, and any expired one.
                leave = [{"d_key": k, "d_ip": ip, "d_from": moved.get(k, ip), "d_now": expired_before}
                         for k, ip in sorted(ip_of_key.items())]
                self._executemany(conn, _DELETE_LEASE_KEY, leave)
                written = self._bind(conn, recs, now, expired_before)
                out.lost = {r.ip for r in recs} - written
            if self.dialect == "postgresql" and (recs or gone):
                self._notify(conn, sender, [r for r in recs if r.ip not in out.lost],
                             [(g["d_ip"], g["d_key"]) for g in gone])
        return out

    def _bind(self, conn, recs: list[LeaseRecord], now: float, expired_before: float) -> set[str]:
        """The conditional upsert, one statement per 500 rows; the addresses it wrote."""
        written: set[str] = set()
        pg = self.dialect == "postgresql"
        for i in range(0, len(recs), 500):
            chunk = recs[i:i + 500]
            params: list = []
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

    def _notify(self, conn, sender: str, written: list[LeaseRecord], deleted: list[tuple[str, str | None]]) -> None:
        """The batch's changes to every server LISTENing, delivered when (and only if) it commits.
        Payload: {"from": sender, "l": [[ip, key, mac, expires, client_id, hostname, uuid] | [ip, key|null]]}."""
        payloads, cur, size = [], [], 0
        items: list[list] = [[r.ip, r.key, r.mac, r.expires, r.client_id, r.hostname, r.uuid] for r in written]
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
        if payloads:
            conn.exec_driver_sql("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (LEASE_CHANNEL, payloads))

    @staticmethod
    def parse_lease_notify(payload: str) -> tuple[str, list[LeaseRecord], list[tuple[str, str | None]]]:
        """A `LEASE_CHANNEL` payload: (sender, written leases, deleted (ip, key))."""
        msg = json.loads(payload)
        written, deleted = [], []
        for it in msg.get("l", ()):
            if len(it) == 7:
                written.append(LeaseRecord(key=it[1], ip=it[0], mac=it[2], expires=it[3], client_id=it[4],
                                           hostname=it[5], uuid=it[6]))
            elif len(it) == 2:
                deleted.append((it[0], it[1]))
        return msg.get("from", ""), written, deleted

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

    # -- DHCPv6 leases ----------------------------------------------------
    def load_leases6(self) -> list[Lease6Record]:
        with self._session() as s:
            return [Lease6Record(r.key, r.ip, r.mac, r.expires) for r in s.scalars(select(Lease6))]

    def save_leases6(self, upserts: Iterable[Lease6Record], deletes: Iterable[str] = ()) -> None:
        """One transaction for a batch from the DHCPv6 core, which is the authority (one server):
        one lease per key and per address, as the core keeps them."""
        by_key: dict[str, Lease6Record] = {}
        for rec in upserts:  # a batch may name a key twice (the SLAAC record of two IAs of one MAC): last wins
            by_key.pop(rec.key, None)
            by_key[rec.key] = rec
        by_ip = {r.ip: r for r in by_key.values()}  # and an address once, its last holder
        recs = list(by_ip.values())
        gone = list(deletes)
        if not recs and not gone:
            return
        with self.engine.begin() as conn:  # one statement per kind of change, not per lease
            conn.execute(delete(Lease6).where(Lease6.ip.in_(gone + [r.ip for r in recs])))
            if recs:
                conn.execute(delete(Lease6).where(Lease6.key.in_([r.key for r in recs])))
                conn.execute(insert(Lease6), [{"ip": r.ip, "key": r.key, "mac": normalize_mac(r.mac),
                                               "expires": r.expires} for r in recs])

    def _leases6_where(self, cond, now: float) -> list[LeaseRecord]:  # noqa: ANN001
        """IPv6 leases as the access rule reads leases: the machine's own (`hw:` + its MAC),
        the MAC being what the DHCPv6 core learned it by (option 79, EUI-64 source, DUID)."""
        with self._session() as s:
            return [LeaseRecord(key="hw:" + r.mac, ip=r.ip, mac=r.mac, expires=r.expires)
                    for r in s.scalars(select(Lease6).where(cond, Lease6.expires > now))]

    def leases_of(self, mac: str, now: float | None = None) -> list[LeaseRecord]:
        """Every unexpired lease with this chaddr (one per client id): the access rule picks the node's own."""
        now = time.time() if now is None else now
        self.checkpoint_leases()
        with self._session() as s:
            v4 = [_lease_record(r) for r in s.scalars(
                select(Lease).where(Lease.mac == normalize_mac(mac), Lease.expires > now))]
        return v4 + self._leases6_where(Lease6.mac == normalize_mac(mac), now)

    def active_leases(self, macs: Collection[str] | None = None, now: float | None = None) -> list[LeaseRecord]:
        """The unexpired leases of these MACs, or of every MAC: one query, for the nodes' views."""
        now = time.time() if now is None else now
        self.checkpoint_leases()
        q = select(Lease).where(Lease.expires > now)
        if macs is not None:
            q = q.where(Lease.mac.in_([normalize_mac(m) for m in macs]))
        with self._session() as s:
            return [_lease_record(r) for r in s.scalars(q)]

    def lease_at(self, ip: str, now: float | None = None) -> LeaseRecord | None:
        """The unexpired lease on an address, if any."""
        now = time.time() if now is None else now
        if ":" in ip:
            found = self._leases6_where(Lease6.ip == ip, now)
            return found[0] if found else None
        self.checkpoint_leases()
        with self._session() as s:
            r = s.scalar(select(Lease).where(Lease.ip == ip, Lease.expires > now))
            return _lease_record(r) if r else None

    # -- events and inventory ---------------------------------------------
    def add_events(self, events: Iterable[EventRecord]) -> None:
        """A batch of events whose MACs are already normalised (EventLog does it as each is recorded)."""
        dumps = json.dumps  # what the JSON column's bind processor does, done here for the batch
        rows = [(e.mac, e.stage, e.source, dumps(e.detail), e.at, e.server) for e in events]  # _EVENT_COLUMNS
        if rows:
            with self.engine.begin() as conn:
                if self.dialect == "sqlite":
                    # Rows in a few multi-row statements: the flush runs in a worker thread, which
                    # then waits for the GIL a few times, not after every row sqlite steps.
                    for i in range(0, len(rows), _CHUNK):
                        part = rows[i:i + _CHUNK]
                        conn.exec_driver_sql(_SQLITE_EVENTS + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(part)),
                                             tuple(v for r in part for v in r))
                else:
                    self._executemany(conn, _INSERT_EVENT, rows, _EVENT_COLUMNS)
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (EVENT_CHANNEL, rows[0][5] or ""))

    def prune_events(self, before: float, keep_per_node: int, now: float | None = None) -> int:
        """The hourly retention pass. Events older than `before` (unix time) go, and each node's
        beyond its newest `keep_per_node`; so do hardware reports older than `before`, and the
        events of machines only seen (never registered, never reported, no inventory) after
        `seen_keep_days`: a DISCOVER from a random MAC does not stay for months. How many events
        went. One pass over the (mac, at) index per node over the cap."""
        now = time.time() if now is None else now
        other = Event.__table__.alias("reported")
        with self.engine.begin() as conn:
            gone = conn.execute(delete(Event).where(Event.at < before)).rowcount or 0
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

    def last_event_id(self) -> int:
        with self._session() as s:
            return s.scalar(select(func.max(Event.id))) or 0

    def events_after(self, after: int, not_server: str | None = None,
                     limit: int = 5000) -> list[tuple[int, EventRecord]]:
        """Events with an id above `after`, oldest first, except those `not_server` recorded
        (a server's own reach its watchers directly): how boots served by others are seen."""
        q = select(Event).where(Event.id > after)
        if not_server is not None:
            q = q.where((Event.server.is_(None)) | (Event.server != not_server))
        with self._session() as s:
            return [(r.id, EventRecord(mac=r.mac, stage=r.stage, at=r.at, source=r.source, detail=r.detail or {},
                                       server=r.server))
                    for r in s.scalars(q.order_by(Event.id).limit(limit))]

    # -- servers (several on one database) ----------------------------------
    def heartbeat(self, rec: ServerRecord) -> None:
        """Register this server, or renew its row: its URLs, verified images and last seen time."""
        with self._session.begin() as s:
            row = s.get(Server, rec.name) or Server(name=rec.name, started=rec.started)
            row.address, row.http_base, row.images = rec.address, rec.http_base, rec.images
            row.started, row.last_seen, row.group = rec.started, rec.last_seen, rec.group
            s.add(row)

    def touch_server(self, name: str, at: float) -> bool:
        """The cheap heartbeat: only last_seen. False when the row is gone (register again)."""
        with self.engine.begin() as conn:
            return conn.execute(Server.__table__.update().where(Server.name == name).values(last_seen=at)).rowcount > 0

    def list_servers(self) -> list[ServerRecord]:
        with self._session() as s:
            return [ServerRecord(name=r.name, address=r.address, http_base=r.http_base, images=dict(r.images or {}),
                                 started=r.started, last_seen=r.last_seen, group=r.group)
                    for r in s.scalars(select(Server).order_by(Server.name))]

    def remove_server(self, name: str) -> None:
        with self._session.begin() as s:
            s.execute(delete(Server).where(Server.name == name))

    def events(self, mac: str, limit: int = 200) -> list[EventRecord]:
        with self._session() as s:
            rows = s.scalars(
                select(Event)
                .where(Event.mac == normalize_mac(mac))
                .order_by(Event.at.desc(), Event.id.desc())
                .limit(limit)
            )
            out = [EventRecord(mac=r.mac, stage=r.stage, at=r.at, source=r.source, detail=r.detail or {},
                               server=r.server) for r in rows]
        out.reverse()
        return out

    def add_inventory(self, mac: str, data: dict, at: float | None = None) -> None:
        """A hardware report; the node's beyond its newest `inventory_keep` go in the same transaction."""
        mac = normalize_mac(mac)
        with self._session.begin() as s:
            s.add(Inventory(mac=mac, data=data, at=at or time.time()))
            s.flush()
            newest = select(Inventory.id).where(Inventory.mac == mac).order_by(
                Inventory.at.desc(), Inventory.id.desc()).limit(self.inventory_keep)
            s.execute(delete(Inventory).where(Inventory.mac == mac, Inventory.id.not_in(newest.scalar_subquery())))

    def inventory(self, mac: str) -> dict | None:
        with self._session() as s:
            row = s.scalar(
                select(Inventory).where(Inventory.mac == normalize_mac(mac)).order_by(Inventory.at.desc()).limit(1)
            )
            return dict(row.data) if row else None

    def recent_events(self, limit: int, macs: Collection[str] | None = None) -> dict[str, list[EventRecord]]:
        """Each MAC's newest `limit` events (oldest first), for every MAC or those of `macs`,
        in one query: the status page and the node list cost the same at 50 MACs or 5,000."""
        newest = func.row_number().over(partition_by=Event.mac, order_by=(Event.at.desc(), Event.id.desc()))
        q = select(Event, newest.label("n"))
        if macs is not None:
            q = q.where(Event.mac.in_(list(macs)))
        sub = q.subquery()
        out: dict[str, list[EventRecord]] = {}
        with self._session() as s:
            for r in s.execute(select(sub).where(sub.c.n <= limit).order_by(sub.c.mac, sub.c.at, sub.c.id)):
                out.setdefault(r.mac, []).append(EventRecord(mac=r.mac, stage=r.stage, at=r.at, source=r.source,
                                                             detail=r.detail or {}, server=r.server))
        return out

    def latest_inventory(self, macs: Collection[str] | None = None) -> dict[str, tuple[float, dict]]:
        """Each MAC's newest hardware report as (unix time, report), in one query."""
        newest = func.row_number().over(partition_by=Inventory.mac, order_by=(Inventory.at.desc(), Inventory.id.desc()))
        q = select(Inventory.mac, Inventory.at, Inventory.data, newest.label("n"))
        if macs is not None:
            q = q.where(Inventory.mac.in_(list(macs)))
        sub = q.subquery()
        with self._session() as s:
            return {r.mac: (r.at, dict(r.data)) for r in s.execute(select(sub).where(sub.c.n == 1))}

    def inventory_history(self, mac: str, limit: int = 50) -> list[tuple[float, dict]]:
        """Past hardware reports, newest first, as (unix time, report)."""
        with self._session() as s:
            rows = s.scalars(
                select(Inventory).where(Inventory.mac == normalize_mac(mac)).order_by(Inventory.at.desc()).limit(limit)
            )
            return [(r.at, dict(r.data)) for r in rows]


_EVENT_COLUMNS = ("mac", "stage", "source", "detail", "at", "server")  # the table's order
_INSERT_EVENT = insert(Event.__table__)
_SQLITE_EVENTS = f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES "
_CHUNK = 500  # rows per multi-row statement (SQLite allows 32,766 parameters)
_L = Lease.__table__.c
# An address goes; with a key, only if that key still holds it (another server may have rebound it).
_DELETE_LEASE_IP_KEY = delete(Lease.__table__).where(
    _L.ip == bindparam("d_ip"), func.coalesce(bindparam("d_key"), _L.key) == _L.key
)
# A key's other addresses go: the one its core knew it left, and expired ones. An unexpired
# address the core did not know of (another server bound it a moment ago) stays, and blocks the bind.
_DELETE_LEASE_KEY = delete(Lease.__table__).where(
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


def _profile_spec(r: Profile) -> ProfileSpec:
    return ProfileSpec(name=r.name, image=r.image, kernel_args=r.kernel_args or "", ssh_keys=list(r.ssh_keys or []),
                       overlays=list(r.overlays or []), labels=dict(r.labels or {}), bmc=r.bmc)


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
        bmc=r.bmc,
        boot_once=r.boot_once,
    )
