"""Hardware reports (the `inventory` table): what a node said about itself, with retention."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, func, select

from ...macaddr import normalize_mac
from ..models import Inventory
from .db import Db


class HardwareRepo:
    def __init__(self, db: Db, keep: int = 20):
        """A node keeps its newest `keep` hardware reports."""
        self._db = db
        self.keep = keep

    def add(self, mac: str, data: dict[str, Any], at: float | None = None) -> None:
        """A hardware report; the node's beyond its newest `keep` go in the same transaction."""
        mac = normalize_mac(mac)
        with self._db.session.begin() as s:
            s.add(Inventory(mac=mac, data=data, at=at or time.time()))
            s.flush()
            newest = select(Inventory.id).where(Inventory.mac == mac).order_by(
                Inventory.at.desc(), Inventory.id.desc()).limit(self.keep)
            s.execute(delete(Inventory).where(Inventory.mac == mac, Inventory.id.not_in(newest.scalar_subquery())))

    def latest(self, mac: str) -> dict[str, Any] | None:
        """The node's newest report."""
        with self._db.session() as s:
            row = s.scalar(
                select(Inventory).where(Inventory.mac == normalize_mac(mac)).order_by(Inventory.at.desc()).limit(1)
            )
            return dict(row.data) if row else None

    def latest_of(self, macs: Collection[str] | None = None) -> dict[str, tuple[float, dict[str, Any]]]:
        """Each MAC's newest hardware report as (unix time, report), in one query."""
        newest = func.row_number().over(partition_by=Inventory.mac, order_by=(Inventory.at.desc(), Inventory.id.desc()))
        q = select(Inventory.mac, Inventory.at, Inventory.data, newest.label("n"))
        if macs is not None:
            q = q.where(Inventory.mac.in_(list(macs)))
        sub = q.subquery()
        with self._db.session() as s:
            return {r.mac: (r.at, dict(r.data)) for r in s.execute(select(sub).where(sub.c.n == 1))}

    def history(self, mac: str, limit: int = 50) -> list[tuple[float, dict[str, Any]]]:
        """Past hardware reports, newest first, as (unix time, report)."""
        with self._db.session() as s:
            rows = s.scalars(
                select(Inventory).where(Inventory.mac == normalize_mac(mac)).order_by(Inventory.at.desc()).limit(limit)
            )
            return [(r.at, dict(r.data)) for r in rows]
