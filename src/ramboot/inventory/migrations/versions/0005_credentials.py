"""Per-boot node credentials (access.py).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "credentials" in set(sa.inspect(op.get_bind()).get_table_names()):
        return
    op.create_table(
        "credentials",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("nic", sa.String(17), nullable=False),
        sa.Column("node", sa.String(17), nullable=False),
        sa.Column("uuid", sa.String(36), nullable=True),
        sa.Column("ip", sa.String(45), nullable=False),
        sa.Column("minted", sa.Float(), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("claimed_ip", sa.String(45), nullable=True),
        sa.Column("claimed_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_credentials_nic", "credentials", ["nic"])
    op.create_index("ix_credentials_node", "credentials", ["node"])
    op.create_index("ix_credentials_minted", "credentials", ["minted"])


def downgrade() -> None:
    op.drop_table("credentials")
