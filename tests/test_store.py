"""The store: nodes, leases (batched), events and inventory survive a reopen."""

import pytest

from ramboot.inventory.store import EventRecord, LeaseRecord, NodeSpec, Store, StoreError
from ramboot.proto.dhcp_core import lease_key


def test_nodes_leases_events_roundtrip(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    s = Store(url)
    s.nodes.put(NodeSpec(mac="52-54-00-12-34-56", image="demo", ip="172.22.33.50", labels={"rack": "a1"}))
    with pytest.raises(StoreError, match="already fixed"):
        s.nodes.put(NodeSpec(mac="52:54:00:00:00:01", ip="172.22.33.50"))
    s.leases.save([LeaseRecord(key=lease_key(None, "52:54:00:00:00:02"), ip="172.22.33.100", mac="52:54:00:00:00:02", expires=100.0)])
    s.leases.save([LeaseRecord(key=lease_key(None, "52:54:00:00:00:02"), ip="172.22.33.101", mac="52:54:00:00:00:02", expires=200.0)])
    s.events.add([EventRecord("52:54:00:12:34:56", "dhcp-ack", 1.0, detail={"ip": "172.22.33.50"}),
                  EventRecord("52:54:00:12:34:56", "booted", 2.0, source="node")])
    s.hardware.add("52:54:00:12:34:56", {"cpu": {"count": 2}})
    s.close()

    s = Store(url)
    node = s.nodes.get("52:54:00:12:34:56")
    assert node.image == "demo" and node.labels == {"rack": "a1"}
    leases = s.leases.load()
    assert [(r.ip, r.expires) for r in leases] == [("172.22.33.101", 200.0)]  # one lease per key (here: the MAC)
    assert [e.stage for e in s.events.of("52:54:00:12:34:56")] == ["dhcp-ack", "booted"]
    assert s.hardware.latest("52:54:00:12:34:56") == {"cpu": {"count": 2}}
    assert s.nodes.remove("52:54:00:12:34:56") and s.nodes.get("52:54:00:12:34:56") is None
    s.close()


def test_events_are_pruned_by_age_and_per_node(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'r.db'}")
    busy, quiet = "52:54:00:00:00:aa", "52:54:00:00:00:bb"
    s.events.add([EventRecord(busy, "dhcp-ack", 1000.0 + i) for i in range(150)])  # a node in a reboot loop
    s.events.add([EventRecord(quiet, "booted", 10.0), EventRecord(quiet, "booted", 2000.0)])
    gone = s.events.prune(before=500.0, keep_per_node=100, now=3000.0)
    assert gone == 51  # the quiet node's old event, and the busy node's 50 oldest
    assert [e.at for e in s.events.of(quiet)] == [2000.0]
    kept = sorted(e.at for e in s.events.of(busy, limit=1000))
    assert kept == [1000.0 + i for i in range(50, 150)]
    assert s.events.prune(before=500.0, keep_per_node=100, now=3000.0) == 0
    s.close()


def test_the_event_log_prunes_when_it_starts(tmp_path):
    """The wiring `ramboot serve` uses: EventLog's task prunes at start with its retention settings."""
    import asyncio

    from ramboot.server.events import EventLog

    s = Store(f"sqlite:///{tmp_path / 'r.db'}")
    mac = "52:54:00:00:00:cc"
    s.nodes.put(NodeSpec(mac))  # registered: not a machine only seen, whose events go after a day
    s.events.add([EventRecord(mac, "dhcp-ack", 1000.0 + i) for i in range(150)])

    async def run() -> None:
        log = EventLog(s.events, flush_interval=0.05, keep_days=1e6, keep_per_node=100)
        log.start()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(s.events.of(mac, limit=1000)) == 100:
                break
        await log.stop()

    asyncio.run(run())
    assert sorted(e.at for e in s.events.of(mac, limit=1000)) == [1000.0 + i for i in range(50, 150)]
    s.close()
