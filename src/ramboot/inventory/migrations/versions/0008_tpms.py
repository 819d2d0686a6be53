"""Nodes' TPMs: the endorsement key each enrolled and whether it is trusted (tpm_gate.py).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "tpms" in set(sa.inspect(op.get_bind()).get_table_names()):
        return
    op.create_table(
        "tpms",
        sa.Column("node", sa.String(17), primary_key=True),
        sa.Column("ek_fingerprint", sa.String(71), nullable=False),
        sa.Column("ek_public", sa.Text(), nullable=False),
        sa.Column("ek_cert", sa.String(512), nullable=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("seen", sa.Float(), nullable=False),
        sa.Column("trusted_at", sa.Float(), nullable=True),
        sa.Column("refused_fingerprint", sa.String(71), nullable=True),
        sa.Column("refused_public", sa.Text(), nullable=True),
        sa.Column("refused_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("tpms")
