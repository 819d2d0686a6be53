"""Read models shared by the service and the live feed: events, boots, inventory and status rows."""

from __future__ import annotations

from pydantic import ValidationError

from ..images.manifest import Manifest
from . import schemas as S
from .store import EventRecord
from .timeline import Boot


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
