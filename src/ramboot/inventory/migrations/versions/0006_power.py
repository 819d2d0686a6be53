"""Power: a node's and a profile's BMC URL (password sealed in `secrets`), a node's boot-once
image, the power action counters, and captured console lines.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    nodes = {c["name"] for c in inspector.get_columns("nodes")}
    with op.batch_alter_table("nodes") as batch:
        if "bmc" not in nodes:
            batch.add_column(sa.Column("bmc", sa.String(1024), nullable=True))
        if "boot_once" not in nodes:
            batch.add_column(sa.Column("boot_once", sa.String(128), nullable=True))
    if "bmc" not in {c["name"] for c in inspector.get_columns("profiles")}:
        with op.batch_alter_table("profiles") as batch:
            batch.add_column(sa.Column("bmc", sa.String(1024), nullable=True))
    if "power_counts" not in set(inspector.get_table_names()):
        op.create_table(
            "power_counts",
            sa.Column("action", sa.String(16), primary_key=True),
            sa.Column("result", sa.String(16), primary_key=True),
            sa.Column("n", sa.Integer(), nullable=False),
        )
    if "console_lines" not in set(inspector.get_table_names()):
        op.create_table(
            "console_lines",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("mac", sa.String(17), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("line", sa.String(200), nullable=False),
        )
        op.create_index("ix_console_lines_mac_at", "console_lines", ["mac", "at"])


def downgrade() -> None:
    op.drop_table("console_lines")
    op.drop_table("power_counts")
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("bmc")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("boot_once")
        batch.drop_column("bmc")
