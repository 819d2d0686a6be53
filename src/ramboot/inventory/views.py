"""Read models shared by the service and the live feed: events, boots, inventory and status rows."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import ValidationError

from ..images.manifest import Manifest
from . import schemas as S
from .store import EventRecord, Store
from .timeline import Boot, last_boot


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


def report_of(data: dict) -> S.InventoryReport:
    try:
        return S.InventoryReport.model_validate(data)
    except ValidationError:  # stored by an older, looser version: show what we can
        return S.InventoryReport()


def inventory_out(latest: tuple[float, dict] | None) -> S.InventoryOut | None:
    """A node's newest hardware report, (unix time, report) as the store gives it."""
    if latest is None:
        return None
    at, data = latest
    return S.InventoryOut(at=at, report=report_of(data))


def all_status(store: Store, macs: Collection[str] | None = None) -> list[S.NodeStatus]:
    """The status page's rows: every machine known, or those of `macs` (the live feed), each
    with its last boot from its newest 200 events; three queries, however many machines."""
    specs = {n.mac: n for n in store.list_nodes(macs)}
    events = store.recent_events(200, macs)
    inventory = store.latest_inventory(macs)
    rows = []
    for mac in sorted(specs.keys() | events.keys() | inventory.keys() if macs is None else set(macs)):
        spec = specs.get(mac)
        rows.append(S.NodeStatus(
            mac=mac,
            registered=spec is not None,
            discovered=bool(spec and spec.discovered),
            hostname=spec.hostname if spec else None,
            image=spec.image if spec else None,
            inventory=inventory_out(inventory.get(mac)),
            last_boot=boot_out(last_boot(events.get(mac, []))),
        ))
    return rows
