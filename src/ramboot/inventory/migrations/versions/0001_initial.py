"""Initial schema: nodes, leases, boot events, hardware inventory.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("mac", sa.String(17), primary_key=True),
        sa.Column("uuid", sa.String(36), nullable=True),
        sa.Column("hostname", sa.String(253), nullable=True),
        sa.Column("ip", sa.String(15), nullable=True, unique=True),
        sa.Column("image", sa.String(128), nullable=True),
        sa.Column("loader", sa.String(16), nullable=True),
        sa.Column("kernel_args", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("discovered", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_nodes_uuid", "nodes", ["uuid"])
    op.create_table(
        "leases",
        sa.Column("ip", sa.String(15), primary_key=True),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=True),
        sa.Column("hostname", sa.String(253), nullable=True),
        sa.Column("expires", sa.Float(), nullable=False),
    )
    op.create_index("ix_leases_mac", "leases", ["mac"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_events_mac_at", "events", ["mac", "at"])
    op.create_table(
        "inventory",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_inventory_mac", "inventory", ["mac"])


def downgrade() -> None:
    op.drop_table("inventory")
    op.drop_table("events")
    op.drop_table("leases")
    op.drop_table("nodes")
