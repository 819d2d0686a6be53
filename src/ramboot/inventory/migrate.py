"""Schema migrations (alembic) run when a Store opens, so SQLite to PostgreSQL is a URL change.

Every database, fresh or old, is brought to head by the migrations themselves
(no `create_all`): one path, the same on every engine. A database made by
`create_all` before migrations existed is stamped at 0001 first. A model change
needs a new revision in `migrations/versions/`; `tests/test_migrations.py`
fails until the migrated schema matches the models again.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"  # the schema create_all made before migrations existed
# pg_advisory_xact_lock key ("ramb"): servers that start at once on one PostgreSQL
# database migrate one after the other; the later ones find the schema at head.
MIGRATION_LOCK = 0x72616D62


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()  # type: ignore[return-value]


def upgrade_to_head(engine: Engine) -> None:
    """Bring the schema to head. On PostgreSQL the whole check-and-migrate runs under a
    transaction-scoped advisory lock (and transactional DDL), so two servers starting at
    once never run the same migration twice: the second waits, then sees head."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head():
            return
        cfg = alembic_config(conn)
        if current is None and inspect(conn).has_table("nodes"):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")
