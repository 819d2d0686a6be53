"""Where a boot starts and ends, and what stage it has reached (inventory/timeline.py)."""

from __future__ import annotations

import pytest

from ramboot.inventory.store import EventRecord
from ramboot.inventory.timeline import GAP, last_boot, split_boots

MAC = "52:54:00:00:00:01"


def evs(*stages_at):
    return [EventRecord(mac=MAC, stage=s, at=t, detail=d) for s, t, *rest in stages_at for d in [rest[0] if rest else {}]]


PXE = [("dhcp-offer", 0), ("dhcp-ack", 1), ("loader", 2), ("dhcp-offer", 3), ("dhcp-ack", 4), ("script", 5), ("kernel", 6)]


@pytest.mark.parametrize(
    "events,boots,stage",
    [
        (PXE, 1, "kernel"),  # iPXE's second DHCP stays in the same boot
        (PXE + [("initramfs", 8), ("dhcp-offer", 9), ("booted", 20)], 1, "booted"),
        (PXE + [("booted", 20), ("dhcp-ack", 1000)], 1, "booted"),  # renewal after boot
        (PXE + [("booted", 20), ("dhcp-offer", 30), ("dhcp-ack", 31), ("loader", 32)], 2, "loader"),  # reboot
        (PXE + [("failed", 20, {"reason": "sha256 mismatch"}), ("script", 40)], 2, "script"),
        (PXE + [("dhcp-offer", 7 + GAP + 1)], 2, "dhcp-offer"),  # hung, then reset
        (PXE + [("booted", 7 + GAP + 1)], 1, "booted"),  # a slow boot is still one boot
    ],
)
def test_split(events, boots, stage):
    got = split_boots(evs(*events))
    assert len(got) == boots
    assert got[-1].stage == stage
    assert sum(len(b.events) for b in got) == len(events)


def test_duration_speed_failure():
    b = last_boot(evs(*PXE, ("download-done", 10, {"bytes": 125_000_000, "seconds": 2}), ("booted", 30)))
    assert b.duration == 30 and b.download_mbps == 500.0 and b.failure is None
    b = last_boot(evs(*PXE, ("rootfs", 9, {"bytes": 1_000_000, "seconds": 0.008}), ("failed", 12, {"reason": "no link"})))
    assert b.duration is None and b.download_mbps == 1000.0 and b.failure == "no link" and b.stage == "failed"
    assert last_boot([]) is None


def test_refused_and_contested_are_notes_that_open_no_boot():
    """Item 13 of the trust work: what others do to a node (a refused claim of its secrets, a
    contested boot) shows in its timeline but never starts, ends or stretches a boot."""
    events = evs(("dhcp-ack", 0), ("script", 1), ("booted", 9), ("refused", 200), ("contested", 300),
                 ("dhcp-ack", 400), ("script", 401), ("refused", 402), ("booted", 410))
    boots = split_boots(events)
    assert [[e.stage for e in b.events] for b in boots] == [
        ["dhcp-ack", "script", "booted", "refused", "contested"], ["dhcp-ack", "script", "refused", "booted"]]
    assert [b.duration for b in boots] == [9, 10]
    assert last_boot(evs(("script", 0), ("refused", 1))).stage == "script"
