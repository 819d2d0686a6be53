"""The store: SQLAlchemy 2 over SQLite by default, so PostgreSQL is a URL change.

The composition root of the store's parts (`parts/`), one repository per
concern over one engine: `nodes`, `profiles`, `secrets`, `leases`, `events`,
`servers`, `hardware` (the nodes' own reports) and `power` (BMCs, power
counters, console lines), with `credentials` and `tpms`. Consumers take the
part they need, named by a protocol of `ports.py` (or `policy.Directory`,
`access.LeaseDirectory`: `directory`), never the whole store. Opening a Store
runs the schema migrations to head (`migrate.py`) and replays what a killed
server left in the lease journal. How a lease batch becomes durable is
`parts/leases.py` with `lease_commit.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .credentials import Credentials
from .lease_journal import CHECKPOINT_EVERY
from .parts.db import Db, StoreError, StoreOpenError, engine_url, safe_url
from .parts.events import EVENT_CHANNEL, EventRepo
from .parts.hardware import HardwareRepo
from .parts.leases import LEASE_CHANNEL, LeaseCommit, LeaseRepo
from .parts.nodes import NodeRepo, ProfileRepo
from .parts.power import PowerRepo
from .parts.secrets import SecretRepo
from .parts.servers import ServerRepo
from .records import EventRecord, LeaseRecord, NodeSpec, ProfileSpec, ServerRecord
from .tpms import Tpms

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["CHECKPOINT_EVERY", "EVENT_CHANNEL", "LEASE_CHANNEL", "EventRecord", "LeaseCommit", "LeaseRecord",
           "NodeSpec", "ProfileSpec", "ServerRecord", "Store", "StoreDirectory", "StoreError", "StoreOpenError",
           "engine_url", "safe_url"]


class StoreDirectory:
    """`policy.Directory` and `access.LeaseDirectory` over the nodes, profiles and leases parts."""

    def __init__(self, nodes: NodeRepo, profiles: ProfileRepo, leases: LeaseRepo):
        self.nodes, self.profiles, self.leases = nodes, profiles, leases

    def get_node(self, mac: str) -> NodeSpec | None:
        return self.nodes.get(mac)

    def node_by_uuid(self, uuid: str) -> NodeSpec | None:
        return self.nodes.by_uuid(uuid)

    def get_profile(self, name: str) -> ProfileSpec | None:
        return self.profiles.get(name)

    def leases_of(self, mac: str, now: float | None = None) -> list[LeaseRecord]:
        return self.leases.leases_of(mac, now)

    def lease_at(self, ip: str, now: float | None = None) -> LeaseRecord | None:
        return self.leases.lease_at(ip, now)


class Store:
    def __init__(self, url: str, secrets_key: Path | None = None, *, seen_keep_days: float = 1.0,
                 inventory_keep: int = 20):
        """`secrets_key`: the key file that seals the `secrets` table (sealed.py); without one,
        `secrets.get()` is refused. Retention (`events.prune`, `hardware.add`): events of machines
        only seen go after `seen_keep_days`; a node keeps its newest `inventory_keep` hardware reports."""
        self.url = url
        self._db = db = Db(url)
        self.engine, self.dialect = db.engine, db.dialect
        try:
            self.leases = LeaseRepo(db)
            self.secrets = SecretRepo(db, secrets_key)
        except Exception:
            db.dispose()
            raise
        self.nodes = NodeRepo(db, self.secrets)
        self.profiles = ProfileRepo(db, self.secrets)
        self.events = EventRepo(db, seen_keep_days)
        self.servers = ServerRepo(db)
        self.hardware = HardwareRepo(db, inventory_keep)
        self.power = PowerRepo(db, self.nodes, self.profiles, self.secrets, self.hardware)
        self.credentials = Credentials(db.session)
        self.tpms = Tpms(db.session)
        self.directory = StoreDirectory(self.nodes, self.profiles, self.leases)

    @classmethod
    def for_config(cls, config: Config) -> Store:
        """The store a config names, with its secrets key and retention."""
        return cls(config.database_url, config.secrets_key_path, seen_keep_days=config.database.seen_keep_days,
                   inventory_keep=config.database.inventory_keep_per_node)

    @property
    def shared(self) -> bool:
        """PostgreSQL: other servers may use this database too (LISTEN/NOTIFY works)."""
        return self._db.shared

    def listen_dsn(self) -> str:
        """A libpq connection string for a LISTEN connection of one's own (PostgreSQL only)."""
        u = self.engine.url.set(drivername="postgresql")
        return u.render_as_string(hide_password=False)

    def close(self) -> None:
        self.leases.close()
        self._db.dispose()
