"""DHCPv6 leases (issue 19): one per IA, beside the IPv4 leases.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "leases6" in set(sa.inspect(op.get_bind()).get_table_names()):
        return
    op.create_table(
        "leases6",
        sa.Column("ip", sa.String(39), primary_key=True),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
    )
    op.create_index("ux_leases6_key", "leases6", ["key"], unique=True)
    op.create_index("ix_leases6_mac", "leases6", ["mac"])


def downgrade() -> None:
    op.drop_table("leases6")
