"""Several servers on one database: the servers table, lease change times, who recorded an event.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    inspector = sa.inspect(conn)
    if "updated" not in {c["name"] for c in inspector.get_columns("leases")}:
        with op.batch_alter_table("leases") as batch:
            batch.add_column(sa.Column("updated", sa.Float(), nullable=False, server_default="0"))
            batch.create_index("ix_leases_updated", ["updated"])
    if "server" not in {c["name"] for c in inspector.get_columns("events")}:
        with op.batch_alter_table("events") as batch:
            batch.add_column(sa.Column("server", sa.String(64), nullable=True))
    if "servers" not in set(inspector.get_table_names()):
        op.create_table(
            "servers",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("address", sa.String(45), nullable=False),
            sa.Column("http_base", sa.String(255), nullable=False),
            sa.Column("images", sa.JSON(), nullable=False),
            sa.Column("started", sa.Float(), nullable=False),
            sa.Column("last_seen", sa.Float(), nullable=False),
        )
        op.create_index("ix_servers_last_seen", "servers", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_servers_last_seen", "servers")
    op.drop_table("servers")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("server")
    with op.batch_alter_table("leases") as batch:
        batch.drop_index("ix_leases_updated")
        batch.drop_column("updated")
