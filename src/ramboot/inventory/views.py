"""Read models shared by the API and the CLI: nodes with their last boot and inventory."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from . import schemas as S
from .store import EventRecord, NodeSpec, Store
from .timeline import Boot, last_boot

if TYPE_CHECKING:
    from ..server.events import EventLog


def node_warnings(data_dir: Path, default_loader: str, image: str | None, loader: str | None) -> list[str]:
    """What will keep a node from booting as registered, said at `node add` (locally or over the API)."""
    from ..images.manifest import ManifestError, load_manifest

    if not image:
        return []
    try:
        m = load_manifest(data_dir, image)
    except ManifestError as e:
        return [f"{e}; the node will not boot until it is built"]
    if (loader or default_loader) == "grub" and m.kernel_signed is False:
        return [f"loader grub, but the kernel of image {image} carries no signature Debian's shim accepts: "
                "under Secure Boot this node will not boot it"]
    return []


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


def node_out(spec: NodeSpec, boot: Boot | None, cls: type[S.NodeOut] = S.NodeOut, registered: bool = True,
             **extra: Any) -> S.NodeOut:
    fields = asdict(spec)
    fields["labels"] = {str(k): str(v) for k, v in spec.labels.items()}
    state = "seen" if not registered else "discovered" if spec.discovered else "registered"
    return cls(**fields, state=state, stage=boot.stage if boot else None, updated=boot.updated if boot else None,
               **extra)


def node_list(store: Store) -> list[S.NodeOut]:
    """Every machine that asked or booted, registered or not, with its last boot (from its latest
    100 events); three queries, however many machines."""
    specs = {n.mac: n for n in store.list_nodes()}
    events = store.recent_events(100)
    out = []
    for mac in sorted(specs.keys() | events.keys() | store.latest_inventory().keys()):
        spec = specs.get(mac)
        out.append(node_out(spec or NodeSpec(mac=mac), last_boot(events.get(mac, [])), registered=spec is not None))
    return out


def node_detail(store: Store, mac: str) -> S.NodeDetail | None:
    """A machine with its inventory and last boot; None only if nothing is known of it."""
    spec = store.get_node(mac)
    events = store.events(mac)
    hist = store.inventory_history(mac, limit=1)
    inventory = inventory_out(hist[0] if hist else None)
    if spec is None and not events and inventory is None:
        return None
    boot = last_boot(events)
    rec = store.tpms.get(mac)
    tpm = S.TpmOut.model_validate(rec, from_attributes=True) if rec is not None else None
    out = boot_out(boot)
    if boot is not None and out is not None:
        # The firmware prints before its first DHCP request: a boot's console starts a little
        # before its first event, unless that event is the power action that started it.
        since = boot.started - (0 if boot.events[0].stage == "power" else CONSOLE_LEAD)
        out.console = [S.ConsoleLineOut(at=at, line=line) for at, line in store.console_lines(mac, since)]
    detail = node_out(spec or NodeSpec(mac=mac), boot, S.NodeDetail, registered=spec is not None,
                      inventory=inventory, last_boot=out, tpm=tpm, seeding=seeding_out(boot))
    assert isinstance(detail, S.NodeDetail)
    return detail


CONSOLE_LEAD = 30.0  # seconds of console before a boot's first event that are its firmware's


def seeding_out(boot: Boot | None) -> S.SeedingOut | None:
    """Seeding in a boot, from its events: `seeding` (the node), `seed-served` and `seed-skipped` (the server)."""
    if boot is None:
        return None
    state, served, downloads, why = None, 0, 0, ""
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


def consume_boot_once(store: Store, events: EventLog, mac: str) -> bool:
    """The node reported `booted`: if this boot was of its boot-once image, that image is used
    up and the node's own comes back at the next boot. Which image this boot ran is what it
    fetched (the node's download or the server's kernel, initrd and root events), not what is
    set now: a boot-once set while an older boot was under way stays for the next one."""
    spec = store.get_node(mac)
    if spec is None or not spec.boot_once:
        return False
    events.flush()
    boot = last_boot(store.events(mac))
    mark = f"/images/{spec.boot_once}/"  # in a root URL, and in a served name with "/" before it
    ran = boot is not None and any(mark in "/" + str(e.detail.get("url") or e.detail.get("file") or "")
                                   for e in boot.events)
    if ran and store.set_boot_once(mac, None, only_if=spec.boot_once):
        events.record(mac, "boot-once-done", image=spec.boot_once)
        return True
    return False
