"""The engine the parts share: opening it, its dialect, and the compiled-statement cache of the hot batches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from ...config import ConfigError
from ..migrate import upgrade_to_head

CHUNK = 500  # rows per multi-row statement (SQLite allows 32,766 parameters)


class StoreError(Exception):
    pass


class StoreOpenError(StoreError, ConfigError):
    """The database cannot be opened: a config problem, one line for the user."""


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
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
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


class Db:
    """One engine, migrated to head, and its session factory."""

    def __init__(self, url: str):
        self.url = url
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
        self.dialect: str = self.engine.dialect.name
        try:
            upgrade_to_head(self.engine)
        except OperationalError as e:
            self.engine.dispose()
            why = str(e.orig or e).strip().splitlines()
            raise StoreOpenError(f"database.url: cannot open {safe_url(url)}: {why[0] if why else e}") from None
        self.session: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        self._compiled: dict[tuple[int, tuple[str, ...] | None], tuple[str, tuple[str, ...] | None]] = {}

    @property
    def shared(self) -> bool:
        """PostgreSQL: other servers may use this database too (LISTEN/NOTIFY works)."""
        return self.dialect == "postgresql"

    def executemany(self, conn: Connection, stmt: ClauseElement, rows: Sequence[Any],
                    columns: tuple[str, ...] | None = None) -> None:
        """`stmt` compiled once for this dialect, then run as one DBAPI executemany.

        The hot batches (leases, events) skip SQLAlchemy's per-call compilation and
        per-row bind processing; the rows must hold driver-ready values, as dicts or
        as tuples in `columns` order.
        """
        key = (id(stmt), columns)
        hit = self._compiled.get(key)
        if hit is None:
            c = cast(SQLCompiler, stmt.compile(dialect=self.engine.dialect,
                                               column_keys=list(columns) if columns else None, for_executemany=True))
            hit = self._compiled[key] = (str(c), tuple(c.positiontup or ()) if c.positional else None)
        sql, order = hit
        out: Sequence[Any] = rows
        if rows and isinstance(rows[0], tuple):
            assert columns is not None
            if order is None:
                out = [dict(zip(columns, r, strict=True)) for r in rows]
            elif order != columns:
                idx = [columns.index(k) for k in order]
                out = [tuple([r[i] for i in idx]) for r in rows]
        elif order:
            out = [tuple([r[k] for k in order]) for r in rows]
        conn.exec_driver_sql(sql, out)

    def dispose(self) -> None:
        self.engine.dispose()
