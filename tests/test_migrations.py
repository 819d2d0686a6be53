"""Alembic migrations: a fresh database reaches head, the migrated schema matches the models,
and a database made by create_all before migrations existed is adopted without losing data."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from ramboot.inventory.migrate import head
from ramboot.inventory.models import Base
from ramboot.inventory.store import NodeSpec, Store


def test_fresh_database_reaches_head_and_matches_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert ctx.get_current_revision() == head()
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], f"models changed without a migration in inventory/migrations/versions: {diff}"


def test_create_all_database_is_adopted(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO nodes (mac, kernel_args, labels, discovered, created, image) "
            "VALUES ('52:54:00:00:00:07', '', '{}', 0, '2026-01-01 00:00:00', 'demo')"
        )
    engine.dispose()
    store = Store(url)
    try:
        assert store.nodes.get("52:54:00:00:00:07").image == "demo"
        store.nodes.put(NodeSpec(mac="52:54:00:00:00:08", image="demo"))
        assert len(store.nodes.all()) == 2
    finally:
        store.close()
    Store(url).close()  # reopening at head is a no-op
