"""Bounded state (issue 23, item 8): a hostile or chatty network cannot fill the database.

Hardware reports keep known keys only, cut to size, and a node keeps its newest few;
machines only seen (a DISCOVER from a random MAC) age out after `[database] seen_keep_days`;
the status page and the node list cost a constant number of queries, however many MACs.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import event

from ramboot.config import parse_config
from ramboot.inventory.schemas import NIC_ADDRESSES, REPORT_LIST, REPORT_STR, InventoryReport
from ramboot.inventory.service import Service
from ramboot.inventory.store import EventRecord, NodeSpec, Store
from ramboot.policy import Booter


def _service(store: Store) -> Service:
    cfg = parse_config('data_dir = "/nonexistent"\n')
    return Service(cfg, store, Booter(cfg, store.directory, "127.0.0.1"))


def node_list(store: Store) -> list:
    """`node list` and `GET /nodes`, what each node boots included."""
    return _service(store).list_nodes()


def all_status(store: Store, macs: list[str] | None = None) -> list:
    """The status page's rows and the live feed's, what each node boots included."""
    return _service(store).status(macs)


def test_a_report_keeps_known_fields_only_and_stays_small() -> None:
    hostile = {
        "cpu": {"model": "x" * 10_000, "count": 4, "flags": "y" * 50_000},
        "memory_kib": 1024,
        "padding": "z" * 60_000,
        "nics": [{"name": "n" * 500, "mac": "m" * 500, "speed_mbps": 1000, "firmware": "f" * 500,
                  "addresses": ["a" * 500] * 5000}] * 5000,
        "disks": [{"name": "d" * 500, "size_bytes": 1, "model": "q" * 500}] * 5000,
        "dmi": {"vendor": "v" * 500, "product": "p", "serial": "s", "uuid": "u", "bios": {"a": 1}},
        "bmc": {"ip": "1" * 500, "mac": "m" * 500, "ip_source": "evil", "gateway": "10.0.0.1; reboot", "x": 1},
    }
    kept = InventoryReport.model_validate(hostile).model_dump(mode="json")
    assert set(kept) == {"cpu", "memory_kib", "nics", "disks", "dmi", "bmc"}  # unknown keys dropped, not refused
    assert kept["bmc"] == {"ip": None, "mac": None, "ip_source": None, "netmask": None, "gateway": None}
    assert set(kept["cpu"]) == {"model", "count"}
    assert set(kept["nics"][0]) == {"name", "mac", "speed_mbps", "addresses"}
    assert len(kept["nics"][0]["addresses"]) == NIC_ADDRESSES and len(kept["nics"][0]["addresses"][0]) == 50
    assert len(kept["cpu"]["model"]) == REPORT_STR and len(kept["dmi"]["vendor"]) == REPORT_STR
    assert len(kept["nics"]) == REPORT_LIST and len(kept["disks"]) == REPORT_LIST
    assert len(json.dumps(kept)) < 80 * 1024  # the worst case; a real report is a few hundred bytes
    real = {"cpu": {"model": "QEMU Virtual CPU", "count": 2}, "memory_kib": 2048,
            "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56", "speed_mbps": None,
                      "addresses": ["172.22.33.100/24", "fd00:172:22:33::1c4/64"]}], "disks": [],
            "dmi": {"vendor": "QEMU", "product": "Standard PC", "serial": "", "uuid": "abc"},
            "bmc": {"ip": "172.22.33.250", "mac": "52:54:00:aa:bb:cc", "ip_source": "static",
                    "netmask": "255.255.255.0", "gateway": None}}
    assert InventoryReport.model_validate(real).model_dump(mode="json") == real


def test_a_node_keeps_its_newest_reports_and_none_past_the_events_retention(tmp_path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'r.db'}", inventory_keep=20)
    mac = "52:54:00:00:00:01"
    for i in range(50):
        s.hardware.add(mac, {"memory_kib": i}, at=1000.0 + i)
    hist = s.hardware.history(mac, limit=1000)
    assert [d["memory_kib"] for _, d in hist] == list(range(49, 29, -1))  # the newest 20, newest first
    s.hardware.add("52:54:00:00:00:02", {"memory_kib": 1}, at=10.0)
    s.events.prune(before=1035.0, keep_per_node=100, now=2000.0)
    assert [at for at, _ in s.hardware.history(mac, limit=1000)] == [1000.0 + i for i in range(49, 34, -1)]
    assert s.hardware.latest("52:54:00:00:00:02") is None
    s.close()


def test_machines_only_seen_age_out(tmp_path) -> None:
    cfg = parse_config(f'data_dir = "{tmp_path}"\n[database]\nseen_keep_days = 0.5\n')
    s = Store.for_config(cfg)
    assert s.events.seen_keep_days == 0.5
    now = time.time()
    old, recent = now - 86400, now - 3600
    seen, registered, reported, inventoried = (f"52:54:00:00:01:0{i}" for i in range(4))
    s.nodes.put(NodeSpec(registered))
    s.hardware.add(inventoried, {"memory_kib": 1}, at=recent)
    for mac in (seen, registered, reported, inventoried):
        s.events.add([EventRecord(mac, "dhcp-offer", old), EventRecord(mac, "dhcp-offer", recent)])
    s.events.add([EventRecord(reported, "initramfs", old, source="node")])
    gone = s.events.prune(before=now - 90 * 86400, keep_per_node=5000)
    assert gone == 1
    assert [e.at for e in s.events.of(seen)] == [recent]  # its day-old DISCOVER went; today's stays a while
    for mac in (registered, reported, inventoried):
        assert len(s.events.of(mac)) >= 2, mac
    s.close()


def _statements(store: Store, fn) -> int:
    count = 0

    def seen(*_args) -> None:
        nonlocal count
        count += 1

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        fn(store)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    return count


def _fill(tmp_path, n: int, url: str | None = None) -> Store:
    s = Store(url or f"sqlite:///{tmp_path / f'{n}.db'}")
    now = time.time()
    events = []
    for i in range(n):
        mac = f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}"
        if i % 5 == 0:
            s.nodes.put(NodeSpec(mac, hostname=f"n{i}"))
        if i % 7 == 0:
            s.hardware.add(mac, {"memory_kib": i})
        events += [EventRecord(mac, "dhcp-ack", now - 10), EventRecord(mac, "script", now - 9),
                   EventRecord(mac, "booted", now - 1, source="node")]
    s.events.add(events)
    return s


def test_status_page_and_node_list_cost_the_same_at_50_and_500_macs(tmp_path) -> None:
    small, big = _fill(tmp_path, 50), _fill(tmp_path, 500)
    for view in (all_status, node_list):
        assert len(view(big)) == 500 and len(view(small)) == 50
        few, many = _statements(small, view), _statements(big, view)
        assert few == many <= 5, (view.__name__, few, many)
    rows = {r.mac: r for r in all_status(big)}
    r = rows["52:54:00:00:00:00"]
    assert r.registered and r.hostname == "n0" and r.inventory is not None and r.last_boot.stage == "booted"
    assert not rows["52:54:00:00:00:01"].registered and rows["52:54:00:00:00:01"].inventory is None
    live = all_status(big, ["52:54:00:00:00:05", "52:54:00:00:ff:ff"])  # the live feed's rows: known or not
    assert [(x.mac, x.registered) for x in live] == [("52:54:00:00:00:05", True), ("52:54:00:00:ff:ff", False)]
    small.close()
    big.close()


def test_the_status_queries_on_postgresql(tmp_path, pg_url) -> None:
    """The same window-function queries on PostgreSQL: same rows, same constant count."""
    s = _fill(tmp_path, 60, pg_url)
    rows = {r.mac: r for r in all_status(s)}
    assert len(rows) == 60 and rows["52:54:00:00:00:00"].last_boot.stage == "booted"
    assert rows["52:54:00:00:00:00"].inventory is not None and rows["52:54:00:00:00:00"].hostname == "n0"
    assert _statements(s, all_status) <= 5 and _statements(s, node_list) <= 5
    assert all_status(s, ["52:54:00:00:00:07"])[0].inventory is not None
    s.close()
