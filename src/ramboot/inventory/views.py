"""Read models shared by the service and the live feed: events, boots, inventory and status rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from ..images.manifest import Manifest
from . import schemas as S
from .store import EventRecord
from .timeline import Boot, last_boot

if TYPE_CHECKING:
    from ..server.events import EventLog
    from .store import Store


def image_out(m: Manifest) -> S.ImageOut:
    """An image as the API, `image list --json` and `image show --json` say it."""
    return S.ImageOut(
        name=m.name,
        source=m.source,
        created=m.created,
        kernel_version=m.kernel_version,
        initramfs=m.initramfs,
        files=[S.ImageFile(name=k, size=v.size, sha256=v.sha256) for k, v in sorted(m.files.items())],
    )


def event_out(e: EventRecord) -> S.EventOut:
    return S.EventOut.model_validate(e, from_attributes=True)


def boot_out(boot: Boot | None) -> S.BootOut | None:
    return None if boot is None else S.BootOut.model_validate(boot, from_attributes=True)


def report_of(data: dict[str, Any]) -> S.InventoryReport:
    try:
        return S.InventoryReport.model_validate(data)
    except ValidationError:  # stored by an older, looser version: show what we can
        return S.InventoryReport()


def inventory_out(latest: tuple[float, dict[str, Any]] | None) -> S.InventoryOut | None:
    """A node's newest hardware report, (unix time, report) as the store gives it."""
    if latest is None:
        return None
    at, data = latest
    return S.InventoryOut(at=S.unix_time(at), report=report_of(data))


CONSOLE_LEAD = 30.0  # seconds of console before a boot's first event that are its firmware's


def seeding_out(boot: Boot | None) -> S.SeedingOut | None:
    """Seeding in a boot, from its events: `seeding` (the node), `seed-served` and `seed-skipped` (the server)."""
    if boot is None:
        return None
    state: Literal["seeding", "skipped"] | None = None
    served, downloads, why = 0, 0, ""
    for e in boot.events:
        if e.stage == "seeding" and e.source == "node":
            state = state or "seeding"
        elif e.stage == "seed-served" and e.source == "server":
            n = e.detail.get("bytes")
            served += n if isinstance(n, int) and n > 0 else 0
            downloads += 1
        elif e.stage == "seed-skipped" and e.source == "server":
            state, why = "skipped", str(e.detail.get("reason", ""))[:120]
    if state is None:
        return None
    return S.SeedingOut(state=state, bytes_served=served, downloads=downloads, reason=why)


def consume_boot_once(store: Store, events: EventLog, mac: str) -> bool:
    """The node reported `booted`: if this boot was of its boot-once image, that image is used
    up and the node's own comes back at the next boot. Which image this boot ran is what it
    fetched (the node's download or the server's kernel, initrd and root events), not what is
    set now: a boot-once set while an older boot was under way stays for the next one."""
    spec = store.nodes.get(mac)
    if spec is None or not spec.boot_once:
        return False
    events.flush()
    boot = last_boot(store.events.of(mac))
    mark = f"/images/{spec.boot_once}/"  # in a root URL, and in a served name with "/" before it
    ran = boot is not None and any(mark in "/" + str(e.detail.get("url") or e.detail.get("file") or "")
                                   for e in boot.events)
    if ran and store.nodes.set_boot_once(mac, None, only_if=spec.boot_once):
        events.record(mac, "boot-once-done", image=spec.boot_once)
        return True
    return False
