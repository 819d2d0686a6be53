"""Profiles, node SSH keys, profiles and overlays, and the server's secrets.

Nodes inherit profiles (image, kernel arguments, SSH keys, overlays, labels);
the server keeps per-node SSH host keys, machine ids and its SSH CA in
`secrets`, so every server on one database hands a node the same identity.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    inspector = sa.inspect(conn)
    columns = {c["name"] for c in inspector.get_columns("nodes")}
    with op.batch_alter_table("nodes") as batch:
        for name in ("ssh_keys", "profiles", "overlays"):
            if name not in columns:
                batch.add_column(sa.Column(name, sa.JSON(), nullable=False, server_default="[]"))
    tables = set(inspector.get_table_names())
    if "profiles" not in tables:
        op.create_table(
            "profiles",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("image", sa.String(128), nullable=True),
            sa.Column("kernel_args", sa.Text(), nullable=False),
            sa.Column("ssh_keys", sa.JSON(), nullable=False),
            sa.Column("overlays", sa.JSON(), nullable=False),
            sa.Column("labels", sa.JSON(), nullable=False),
        )
    if "secrets" not in tables:
        op.create_table(
            "secrets",
            sa.Column("name", sa.String(128), primary_key=True),
            sa.Column("value", sa.Text(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("secrets")
    op.drop_table("profiles")
    with op.batch_alter_table("nodes") as batch:
        for name in ("overlays", "profiles", "ssh_keys"):
            batch.drop_column(name)
