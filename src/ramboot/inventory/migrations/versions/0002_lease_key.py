"""Leases per DHCP lease key (client id, else MAC), with the firmware's UUID.

Alembic logs the first line as the revision's message: keep it one line.

The DHCP core keys leases by `lease_key()` (RFC 2131 §4.2). The store kept one
lease per MAC, so a MAC seen once with a client id and once without held two
leases in the core but one on disk, and a restart freed an address in use.
Existing rows get their key from the same rule; of two rows with one key the
later-expiring one stays. The UUID lets the OS's own DHCP client, which sends
no option 97, stay the node that its firmware was found to be.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from ramboot.proto.dhcp_core import lease_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    columns = {c["name"] for c in sa.inspect(conn).get_columns("leases")}
    with op.batch_alter_table("leases") as batch:
        if "key" not in columns:
            batch.add_column(sa.Column("key", sa.String(300), nullable=True))
        if "uuid" not in columns:
            batch.add_column(sa.Column("uuid", sa.String(36), nullable=True))
    leases = sa.table("leases", sa.column("ip"), sa.column("mac"), sa.column("client_id"),
                      sa.column("expires"), sa.column("key"))
    best: dict[str, tuple[float, str]] = {}
    drop: list[str] = []
    for ip, mac, client_id, expires in conn.execute(sa.select(leases.c.ip, leases.c.mac, leases.c.client_id,
                                                               leases.c.expires)):
        key = lease_key(client_id, mac)
        conn.execute(leases.update().where(leases.c.ip == ip).values(key=key))
        held = best.get(key)
        if held is None or expires > held[0]:
            if held is not None:
                drop.append(held[1])
            best[key] = (expires, ip)
        else:
            drop.append(ip)
    for ip in drop:
        conn.execute(leases.delete().where(leases.c.ip == ip))
    with op.batch_alter_table("leases") as batch:
        batch.alter_column("key", existing_type=sa.String(300), nullable=False)
    if "ux_leases_key" not in {i["name"] for i in sa.inspect(conn).get_indexes("leases")}:
        op.create_index("ux_leases_key", "leases", ["key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_leases_key", table_name="leases")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("uuid")
        batch.drop_column("key")
