"""The lease journal (inventory/lease_journal.py): what the DHCP server alone on SQLite appends
ends in the leases table as if each lease had been written there one by one, survives the
process being killed, and belongs to one server only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ramboot.inventory.lease_journal import merge
from ramboot.inventory.store import LeaseRecord, Store, StoreOpenError

IPS = [f"10.0.0.{i}" for i in range(1, 6)]
KEYS = [f"02:00:00:00:00:0{i}" for i in range(1, 5)]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _table(store: Store) -> list[tuple]:
    return sorted((r.ip, r.key, r.expires) for r in store.leases.load())


op = st.one_of(
    st.tuples(st.just("u"), st.sampled_from(IPS), st.sampled_from(KEYS), st.integers(1, 9)),
    st.tuples(st.just("d"), st.sampled_from(IPS)),
)


def _rec(ip: str, key: str, t: int) -> LeaseRecord:
    return LeaseRecord(key=key, ip=ip, mac=key, expires=1000.0 + t)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A migrated empty database, copied per example (migrations take most of a Store's opening)."""
    db = tmp_path_factory.mktemp("template") / "t.db"
    Store(f"sqlite:///{db}").close()
    return db


def _model(table: dict, o: tuple, moved: dict) -> None:
    """The authority's write on a dict (an address taken over, a key's other address gone), and
    what the DHCP core reports of it: the key that left an address (`Result.moved`)."""
    if o[0] == "d":
        table.pop(o[1], None)
        return
    _, ip, key, t = o
    for other in [i for i, (k, _) in table.items() if k == key and i != ip]:
        del table[other]
        moved.setdefault(key, other)
    table[ip] = (key, t)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(op, min_size=1, max_size=4), min_size=1, max_size=8),
       checkpoint_at=st.integers(0, 8))
def test_the_journal_ends_as_writing_each_lease_in_turn(tmp_path_factory, template, batches, checkpoint_at) -> None:
    tmp = tmp_path_factory.mktemp("j")
    for name in ("a.db", "b.db"):
        shutil.copy(template, tmp / name)
    direct, journaled = Store(f"sqlite:///{tmp / 'a.db'}"), Store(f"sqlite:///{tmp / 'b.db'}")
    assert journaled.leases.open_journal()
    table: dict[str, tuple[str, int]] = {}
    for n, batch in enumerate(batches):
        final: dict = {}
        ip_of_key: dict[str, str] = {}
        moved: dict[str, str] = {}
        for o in batch:
            if o[0] == "u":
                direct.leases.save([_rec(o[1], o[2], o[3])])  # the authority's write, one lease at a time
                merge(final, [_rec(o[1], o[2], o[3])], [], ip_of_key)
            else:
                direct.leases.save([], [o[1]])
                merge(final, [], [o[1]], ip_of_key)
            _model(table, o, moved)  # (as the server merges moves: the first address a key left)
        # The batch as DhcpServer._flush_once hands it over: the results merged, address by address.
        ups = [r for r in final.values() if r is not None]
        dels = [ip for ip, r in final.items() if r is None]
        journaled.leases.save(ups, dels, moved=moved, owners={})
        if n == checkpoint_at:
            journaled.leases.checkpoint()  # a catch-up in the middle changes nothing
    assert _table(journaled) == _table(direct) == sorted((ip, k, 1000.0 + t) for ip, (k, t) in table.items())
    direct.close(), journaled.close()


def test_a_killed_server_loses_no_appended_lease(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    child = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {SRC!r})
        from ramboot.inventory.store import LeaseRecord, Store
        s = Store("sqlite:///{db}")
        assert s.leases.open_journal()
        for i in range(1, 40):
            s.leases.save([LeaseRecord(key=f"k{{i}}", ip=f"10.0.1.{{i}}", mac="02:00:00:00:00:01", expires=9e9)],
                          [], moved={{}}, owners={{}})
            if i == 20:
                s.leases.checkpoint()  # half in the table, half only in the journal
        os.kill(os.getpid(), 9)
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    journal = Path(f"{db}.leases-journal")
    assert journal.stat().st_size > 0
    with open(journal, "ab") as f:
        f.write(b'{"u":[["10.0.1.99","k99"')  # a line cut by the kill: never acknowledged
    s = Store(f"sqlite:///{db}")  # any process that opens the store while no server runs replays it
    assert [r.ip for r in sorted(s.leases.load(), key=lambda r: int(r.ip.rsplit(".", 1)[1]))] == \
        [f"10.0.1.{i}" for i in range(1, 40)]
    assert journal.stat().st_size == 0
    assert s.leases.open_journal()  # and a server after it starts from a clean journal
    s.leases.save([LeaseRecord(key="k50", ip="10.0.1.50", mac="02:00:00:00:00:02", expires=9e9)], [],
                  moved={}, owners={})
    s.close()
    assert "10.0.1.50" in {r.ip for r in Store(f"sqlite:///{db}").leases.load()}


def test_one_server_per_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = Store(url)
    assert first.leases.open_journal()
    second = Store(url)
    with pytest.raises(StoreOpenError, match="another ramboot serve uses this SQLite store") as e:
        second.leases.open_journal()
    assert "\n" not in str(e.value)
    first.close()
    assert second.leases.open_journal()  # the first is gone: the lock is free
    second.close()


def test_reads_see_what_the_journal_holds(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'r.db'}")
    s.leases.open_journal()
    s.leases.save([LeaseRecord(key="k1", ip="10.0.2.1", mac="02:00:00:00:00:03", expires=9e9)], [],
                  moved={}, owners={})
    assert s.leases.journal_pending
    assert [r.ip for r in s.leases.leases_of("02:00:00:00:00:03")] == ["10.0.2.1"]  # a read catches the table up first
    assert not s.leases.journal_pending
    assert s.leases.lease_at("10.0.2.1").mac == "02:00:00:00:00:03"
    s.close()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("r.db.leases-journal.") and
                p.suffix[1:].isdigit()], os.listdir(tmp_path)


# -- DHCPv6 (`leases6`): its own journal, the same component -----------------------------------------

IP6S = [f"fd00::{i}" for i in range(1, 6)]


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(st.one_of(
    st.tuples(st.just("u"), st.sampled_from(IP6S), st.sampled_from(KEYS), st.integers(1, 9)),
    st.tuples(st.just("d"), st.sampled_from(IP6S))), min_size=1, max_size=4), min_size=1, max_size=8),
    checkpoint_at=st.integers(0, 8))
def test_the_dhcp6_journal_ends_as_the_authoritys_writes(tmp_path_factory, template, batches, checkpoint_at) -> None:
    tmp = tmp_path_factory.mktemp("j6")
    for name in ("a.db", "b.db"):
        shutil.copy(template, tmp / name)
    direct, journaled = Store(f"sqlite:///{tmp / 'a.db'}"), Store(f"sqlite:///{tmp / 'b.db'}")
    assert journaled.leases.v6.open_journal()
    for n, batch in enumerate(batches):
        ups = [_rec(o[1], o[2], o[3]) for o in batch if o[0] == "u"]
        dels = [o[1] for o in batch if o[0] == "d"]
        direct.leases.save6(ups, dels)  # one transaction, as the server wrote it before its journal
        journaled.leases.v6.save(ups, dels, moved={})
        if n == checkpoint_at:
            journaled.leases.v6.checkpoint()

    def table(s: Store) -> list[tuple]:
        return sorted((r.ip, r.key, r.expires) for r in s.leases.load6())

    assert table(journaled) == table(direct)
    keys = [k for _, k, _ in table(direct)]
    assert len(keys) == len(set(keys))  # one lease per key
    direct.close(), journaled.close()


def test_a_killed_server_loses_no_appended_dhcp6_lease(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    child = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {SRC!r})
        from ramboot.inventory.records import Lease6Record
        from ramboot.inventory.store import Store
        s = Store("sqlite:///{db}")
        assert s.leases.v6.open_journal()
        for i in range(1, 40):
            s.leases.v6.save([Lease6Record(f"k{{i}}", f"fd00::{{i:x}}", "02:00:00:00:00:01", 9e9)], [], moved={{}})
            if i == 20:
                s.leases.v6.checkpoint()  # half in the table, half only in the journal
        os.kill(os.getpid(), 9)
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    journal = Path(f"{db}.leases6-journal")
    assert journal.stat().st_size > 0
    s = Store(f"sqlite:///{db}")  # replayed by the next process that opens the store
    assert sorted(r.ip for r in s.leases.load6()) == sorted(f"fd00::{i:x}" for i in range(1, 40))
    assert journal.stat().st_size == 0
    s.close()
