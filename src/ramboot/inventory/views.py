"""Read models shared by the API and the CLI: nodes with their last boot and inventory."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from . import schemas as S
from .store import EventRecord, NodeSpec, Store
from .timeline import Boot, last_boot


def event_out(e: EventRecord) -> S.EventOut:
    return S.EventOut.model_validate(e, from_attributes=True)


def boot_out(boot: Boot | None) -> S.BootOut | None:
    return None if boot is None else S.BootOut.model_validate(boot, from_attributes=True)


def report_of(data: dict) -> S.InventoryReport:
    try:
        return S.InventoryReport.model_validate(data)
    except ValidationError:  # stored by an older, looser version: show what we can
        return S.InventoryReport()


def inventory_out(store: Store, mac: str) -> S.InventoryOut | None:
    hist = store.inventory_history(mac, limit=1)
    if not hist:
        return None
    at, data = hist[0]
    return S.InventoryOut(at=at, report=report_of(data))


def node_out(spec: NodeSpec, boot: Boot | None, cls: type[S.NodeOut] = S.NodeOut, **extra: Any) -> S.NodeOut:
    fields = asdict(spec)
    fields["labels"] = {str(k): str(v) for k, v in spec.labels.items()}
    return cls(**fields, stage=boot.stage if boot else None, updated=boot.updated if boot else None, **extra)


def node_list(store: Store) -> list[S.NodeOut]:
    """Every registered node with its last boot (from its latest 100 events)."""
    return [node_out(n, last_boot(store.events(n.mac, limit=100))) for n in store.list_nodes()]


def node_detail(store: Store, mac: str) -> S.NodeDetail | None:
    spec = store.get_node(mac)
    if spec is None:
        return None
    boot = last_boot(store.events(mac))
    return node_out(spec, boot, S.NodeDetail, inventory=inventory_out(store, mac), last_boot=boot_out(boot))  # type: ignore[return-value]


def node_status(store: Store, mac: str) -> S.NodeStatus:
    return _status(store, mac, store.get_node(mac))


def _status(store: Store, mac: str, spec: NodeSpec | None) -> S.NodeStatus:
    return S.NodeStatus(
        mac=mac,
        registered=spec is not None,
        discovered=bool(spec and spec.discovered),
        hostname=spec.hostname if spec else None,
        image=spec.image if spec else None,
        inventory=inventory_out(store, mac),
        last_boot=boot_out(last_boot(store.events(mac))),
    )


def all_status(store: Store) -> list[S.NodeStatus]:
    specs = {n.mac: n for n in store.list_nodes()}
    return [_status(store, m, specs.get(m)) for m in sorted(specs.keys() | set(store.event_macs()))]
