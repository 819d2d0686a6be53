"""Nodes' TPMs speak for them: this boot's attestation key and report counter (signed reports),
and the first trusted PCR values per image with the last PCR that differed (measured boot).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = (("boot", sa.String(64)), ("ak_public", sa.Text()), ("report_seq", sa.Integer()),
           ("pcrs", sa.JSON()), ("pcr_refused", sa.String(300)), ("pcr_refused_at", sa.Float()))


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("tpms")}
    with op.batch_alter_table("tpms") as batch:
        for name, typ in COLUMNS:
            if name not in have:
                batch.add_column(sa.Column(name, typ, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tpms") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
