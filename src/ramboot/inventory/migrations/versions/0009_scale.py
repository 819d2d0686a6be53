"""Data-centre scale: each server's group (a rack, a row), so nodes name their own group's servers first.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "group_name" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("servers")}:
        with op.batch_alter_table("servers") as batch:
            batch.add_column(sa.Column("group_name", sa.String(63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("group_name")
