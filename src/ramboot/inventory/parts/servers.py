"""Servers sharing one database: their heartbeats, URLs and verified images."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from ..models import Server
from ..records import ServerRecord
from .db import Db


class ServerRepo:
    def __init__(self, db: Db):
        self._db = db

    def heartbeat(self, rec: ServerRecord) -> None:
        """Register this server, or renew its row: its URLs, verified images and last seen time."""
        with self._db.session.begin() as s:
            row = s.get(Server, rec.name) or Server(name=rec.name, started=rec.started)
            row.address, row.http_base, row.images = rec.address, rec.http_base, rec.images
            row.started, row.last_seen, row.group = rec.started, rec.last_seen, rec.group
            s.add(row)

    def touch(self, name: str, at: float) -> bool:
        """The cheap heartbeat: only last_seen. False when the row is gone (register again)."""
        with self._db.engine.begin() as conn:
            return conn.execute(update(Server).where(Server.name == name).values(last_seen=at)).rowcount > 0

    def all(self) -> list[ServerRecord]:
        with self._db.session() as s:
            return [ServerRecord(name=r.name, address=r.address, http_base=r.http_base, images=dict(r.images or {}),
                                 started=r.started, last_seen=r.last_seen, group=r.group)
                    for r in s.scalars(select(Server).order_by(Server.name))]

    def remove(self, name: str) -> None:
        with self._db.session.begin() as s:
            s.execute(delete(Server).where(Server.name == name))
