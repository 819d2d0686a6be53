"""A made-up fleet in a real server's store, for the status page's tests and its screenshots
(`scripts/screenshots.py`): nodes on two profiles, boots that went well, failed or are under
way, leases, hardware reports and two machines only seen. Times are real, backdated."""

from __future__ import annotations

import random
import time
from pathlib import Path

from conftest import write_fake_image
from ramboot.inventory.records import EventRecord, NodeSpec, ProfileSpec
from ramboot.proto.dhcp_core import LeaseRecord, lease_key

# A boot's stages and when each comes, in seconds after the first DHCP offer (the README's timeline).
BOOT = [("dhcp-offer", "server", 0.0), ("dhcp-ack", "server", 0.1), ("script", "server", 0.2),
        ("kernel", "server", 0.3), ("initrd", "server", 0.3), ("initramfs", "node", 2.9),
        ("download-start", "node", 3.1), ("download-done", "node", 5.6), ("verified", "node", 5.8),
        ("switch-root", "node", 6.0), ("booted", "node", 9.5)]


def mac_of(i: int) -> str:
    return f"52:54:00:a0:{i // 256:02x}:{i % 256:02x}"


def hardware(mac: str, rng: random.Random) -> dict:
    cores = rng.choice([8, 16, 32, 64])
    return {"cpu": {"model": rng.choice(["AMD EPYC 7313", "Intel Xeon Gold 6338"]), "count": cores},
            "memory_kib": cores * 4 * 1024 * 1024,
            "nics": [{"name": "eno1", "mac": mac, "speed_mbps": rng.choice([10000, 25000])}], "disks": [],
            "dmi": {"vendor": "Supermicro", "product": "SYS-1029U", "serial": f"S{rng.randrange(10**6):06d}",
                    "uuid": None}}


def boot_events(mac: str, start: float, rng: random.Random, end: str = "booted") -> list[EventRecord]:
    scale = rng.uniform(0.8, 1.6)
    out = []
    for stage, source, t in BOOT:
        detail: dict = {}
        if stage == "dhcp-ack":
            detail = {"ip": "", "firmware": "bios"}
        if stage == "download-done":
            detail = {"url": "http://10.0.0.2/images/x/rootfs.squashfs", "bytes": 310_000_000,
                      "seconds": round(2.5 * scale, 2)}
        if stage == end == "failed" or (end == "failed" and stage == "verified"):
            out.append(EventRecord(mac, "failed", start + t * scale, "node",
                                   {"reason": "the root image's sha256 does not match"}))
            break
        out.append(EventRecord(mac, stage, start + t * scale, source, detail))
        if stage == end:
            break
    return out


def populate(srv, count: int = 20, seed: int = 7) -> list[str]:
    """`count` registered nodes (and two only seen) in `srv` (a tests/httpserver.LiveServer); their MACs."""
    rng = random.Random(seed)
    data = Path(srv.config.data_dir)
    for name in ("demo", "debian-12", "rocky-9"):
        write_fake_image(data, name)
    store, now = srv.store, time.time()
    store.profiles.put(ProfileSpec(name="compute", image="debian-12", labels={"role": "compute"}))
    store.profiles.put(ProfileSpec(name="storage", image="rocky-9", labels={"role": "storage"}))
    macs, events, leases = [], [], []
    for i in range(count):
        mac = mac_of(i + 1)
        macs.append(mac)
        profile = "storage" if i % 5 == 4 else "compute"
        fixed = f"10.0.0.{10 + i}" if profile == "storage" else None
        store.nodes.put(NodeSpec(mac=mac, hostname=f"{'st' if profile == 'storage' else 'cn'}{i + 1:02d}",
                                profiles=[profile], ip=fixed, image="demo" if i == 7 else None,
                                labels={"rack": f"r{1 + i // 8}"}))
        ip = fixed or f"10.0.0.{100 + i}"
        if not fixed:
            leases.append(LeaseRecord(lease_key(None, mac), ip, mac, now + 3600 - rng.randrange(3000)))
        if i in (3, 15):
            continue  # never booted yet
        end = "failed" if i in (6, 12) else "download-start" if i == 18 else "booted"
        start = now - (20 if end == "download-start" else rng.uniform(120, 3 * 3600))
        evs = boot_events(mac, start, rng, end)
        for e in evs:
            if e.stage == "dhcp-ack":
                e.detail["ip"] = ip
        events += evs
        if end != "failed" and end != "download-start":
            store.hardware.add(mac, hardware(mac, rng), at=start + 4)
    for j in (1, 2):  # machines that only asked: nobody registered them
        events += boot_events(f"52:54:00:ff:00:{j:02x}", now - 600 * j, rng, "script")
    store.events.add(events)
    store.leases.save(leases)
    return macs
