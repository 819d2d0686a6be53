"""An in-memory node directory for policy tests (matchbox's testfakes style): no SQLite."""

from __future__ import annotations

from ramboot.inventory.records import NodeSpec, ProfileSpec
from ramboot.macaddr import normalize_mac


class FakeDirectory:
    """`policy.Directory` over a dict; `nodes` as given, looked up as the store does."""

    def __init__(self, *nodes: NodeSpec, profiles: tuple[ProfileSpec, ...] = ()):
        self.by_mac = {normalize_mac(n.mac): n for n in nodes}
        self.profiles = {p.name: p for p in profiles}

    def get_node(self, mac: str) -> NodeSpec | None:
        return self.by_mac.get(normalize_mac(mac))

    def node_by_uuid(self, uuid: str) -> NodeSpec | None:
        return next((n for n in self.by_mac.values() if n.uuid == uuid), None)

    def get_profile(self, name: str) -> ProfileSpec | None:
        return self.profiles.get(name)
