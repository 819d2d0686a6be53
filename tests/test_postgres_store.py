"""The store on PostgreSQL: migrations under a lock, the conditional lease bind, NOTIFY, servers.

Every test runs against a throwaway cluster of its own (conftest `pg_cluster`): a unix
socket in a temporary folder, no TCP, never the system's cluster.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from ramboot.config import ConfigError, parse_config
from ramboot.inventory.migrate import head
from ramboot.inventory.models import Base
from ramboot.inventory.parts.leases import parse_notify
from ramboot.inventory.store import (
    LEASE_CHANNEL,
    EventRecord,
    LeaseRecord,
    ServerRecord,
    Store,
    StoreOpenError,
    engine_url,
)
from ramboot.proto.dhcp_core import lease_key


def _lease(mac: str, ip: str, expires: float) -> LeaseRecord:
    return LeaseRecord(key=lease_key(None, mac), ip=ip, mac=mac, expires=expires)


def test_two_servers_migrate_at_once_and_the_schema_matches_the_models(pg_url: str) -> None:
    barrier = threading.Barrier(4)

    def open_one() -> str:
        barrier.wait()
        s = Store(pg_url)
        s.close()
        return "ok"

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: open_one(), range(4))) == ["ok"] * 4
    engine = create_engine(engine_url(pg_url))
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert ctx.get_current_revision() == head()
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], f"PostgreSQL schema differs from the models: {diff}"


def test_a_bind_is_refused_when_another_client_holds_the_address(pg_url: str) -> None:
    a, b = Store(pg_url), Store(pg_url)  # two servers
    try:
        now = time.time()
        assert a.leases.save([_lease("52:54:00:00:00:0a", "10.0.0.5", now + 600)]).lost == set()
        res = b.leases.save([_lease("52:54:00:00:00:0b", "10.0.0.5", now + 600)], moved={})
        assert res.lost == {"10.0.0.5"}
        assert [(h.ip, h.mac) for h in res.holders] == [("10.0.0.5", "52:54:00:00:00:0a")]
        # the same client again, through the other server: its own lease, renewed
        assert b.leases.save([_lease("52:54:00:00:00:0a", "10.0.0.5", now + 900)], moved={}).lost == set()
        # a client holding an unexpired address cannot be moved by a server that did not know it...
        res = b.leases.save([_lease("52:54:00:00:00:0a", "10.0.0.6", now + 900)], moved={})
        assert res.lost == {"10.0.0.6"} and [h.ip for h in res.holders] == ["10.0.0.5"]
        # ...but can by one that did (the core says which address the key leaves)
        assert b.leases.save([_lease("52:54:00:00:00:0a", "10.0.0.6", now + 900)],
                             moved={lease_key(None, "52:54:00:00:00:0a"): "10.0.0.5"}).lost == set()
        # an expired lease is free for anyone
        a.leases.save([_lease("52:54:00:00:00:0c", "10.0.0.7", now - 1)])
        assert b.leases.save([_lease("52:54:00:00:00:0d", "10.0.0.7", now + 600)], moved={}).lost == set()
        # a release by a server whose view is stale deletes nothing that is not that client's
        b.leases.save([], ["10.0.0.6"], owners={"10.0.0.6": lease_key(None, "52:54:00:00:00:0b")})
        assert {(x.ip, x.mac) for x in a.leases.load()} == {("10.0.0.6", "52:54:00:00:00:0a"),
                                                           ("10.0.0.7", "52:54:00:00:00:0d")}
    finally:
        a.close()
        b.close()


def test_concurrent_batches_never_bind_one_address_to_two_clients(pg_url: str) -> None:
    """Four servers, each writing batches of binds for random clients over the same 60 addresses."""
    stores = [Store(pg_url) for _ in range(4)]
    written: list[tuple[str, str]] = []
    refused = [0]
    lock = threading.Lock()
    now = time.time()

    def server(i: int) -> None:
        rnd = random.Random(i)
        for _ in range(40):
            batch = {}
            for _ in range(25):
                mac = f"52:54:00:00:{rnd.randrange(256):02x}:{rnd.randrange(256):02x}"
                batch[mac] = _lease(mac, f"10.1.0.{rnd.randrange(10, 70)}", now + 600)
            # one address per key and one key per address in a batch, as the core makes them
            seen_ip: dict[str, LeaseRecord] = {}
            for rec in batch.values():
                seen_ip.setdefault(rec.ip, rec)
            recs = list(seen_ip.values())
            res = stores[i].leases.save(recs, moved={}, sender=f"s{i}")
            with lock:
                written.extend((r.ip, r.key) for r in recs if r.ip not in res.lost)
                refused[0] += len(res.lost)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(server, range(4)))
    holders: dict[str, set[str]] = {}
    for ip, key in written:
        holders.setdefault(ip, set()).add(key)
    twice = {ip: keys for ip, keys in holders.items() if len(keys) > 1}
    assert not twice, f"addresses bound to two clients: {twice}"
    final = {(x.ip, x.key) for x in stores[0].leases.load()}
    assert final <= set(written) and len({ip for ip, _ in final}) == len(final)
    assert len(final) == 60 and refused[0] > 1000  # every address taken once; the rest contended and lost
    for s in stores:
        s.close()


def test_without_moved_the_caller_is_the_authority(pg_url: str) -> None:
    s = Store(pg_url)
    try:
        now = time.time()
        s.leases.save([_lease("52:54:00:00:00:0a", "10.0.0.5", now + 600)])
        assert s.leases.save([_lease("52:54:00:00:00:0a", "10.0.0.6", now + 600)]).lost == set()
        assert s.leases.save([_lease("52:54:00:00:00:0b", "10.0.0.6", now + 600)]).lost == set()
        assert [(x.ip, x.mac) for x in s.leases.load()] == [("10.0.0.6", "52:54:00:00:00:0b")]
    finally:
        s.close()


def test_committed_lease_changes_are_notified_to_listeners(pg_url: str, pg_cluster) -> None:
    s = Store(pg_url)
    try:
        with psycopg.connect(s.listen_dsn(), autocommit=True) as conn:
            conn.execute(f'LISTEN "{LEASE_CHANNEL}"')
            now = time.time()
            s.leases.save([_lease("52:54:00:00:01:01", "10.2.0.1", now + 60)], sender="one")
            s.leases.save([], ["10.2.0.1"], owners={"10.2.0.1": lease_key(None, "52:54:00:00:01:01")}, sender="one")
            got = [parse_notify(n.payload) for n in conn.notifies(timeout=5, stop_after=2)]
        assert got[0][0] == "one" and [(r.ip, r.mac) for r in got[0][1]] == [("10.2.0.1", "52:54:00:00:01:01")]
        assert got[1][2] == [("10.2.0.1", lease_key(None, "52:54:00:00:01:01"))]
    finally:
        s.close()


def test_servers_register_heartbeat_and_leave(pg_url: str) -> None:
    s = Store(pg_url)
    try:
        rec = ServerRecord(name="a", address="10.0.0.1", http_base="http://10.0.0.1", images={"demo": {"x": "ab"}},
                           started=1.0, last_seen=2.0)
        s.servers.heartbeat(rec)
        assert s.servers.touch("a", 5.0) and not s.servers.touch("b", 5.0)
        assert [(x.name, x.last_seen, x.images) for x in s.servers.all()] == [("a", 5.0, {"demo": {"x": "ab"}})]
        s.servers.remove("a")
        assert s.servers.all() == []
    finally:
        s.close()


def test_events_from_other_servers_are_read_by_id(pg_url: str) -> None:
    s = Store(pg_url)
    try:
        s.events.add([EventRecord("52:54:00:00:02:01", "dhcp-ack", 1.0, server="a"),
                      EventRecord("52:54:00:00:02:01", "rootfs", 2.0, server="b")])
        assert [(e.stage, e.server) for _, e in s.events.after(0, not_server="a")] == [("rootfs", "b")]
        assert s.events.after(s.events.last_id()) == []
    finally:
        s.close()


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path) -> None:
    with pytest.raises(StoreOpenError) as e:
        Store(f"postgresql://postgres@/nope?host={tmp_path}")
    assert "\n" not in str(e.value) and str(e.value).startswith("database.url: cannot open")
    with pytest.raises(ConfigError, match=r"database.url: .*postgresql://") as e:
        parse_config('[database]\nurl = "mysql://x/y"\n')
    assert "\n" not in str(e.value)
