"""Rack affinity: a node's mirror list names the servers of its own group first (the group of
the subnet it asks from, else of its fixed address), then the others; `[cluster] group` is
each server's, kept in the servers table and shown by GET /api/v1/servers."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from ramboot import names
from ramboot.config import parse_config
from ramboot.inventory.store import NodeSpec, ServerRecord, Store
from ramboot.namespace import Namespace
from ramboot.policy import Booter
from ramboot.proto.pxe import Client
from ramboot.server.cluster import Cluster

SUBNETS = """
[dhcp]
mode = "full"
[[dhcp.subnet]]
range = "10.60.1.100-10.60.1.150"
group = "rack-a"
[[dhcp.subnet]]
range = "10.60.2.100-10.60.2.150"
group = "rack-b"
"""
ME = "http://10.0.0.1"  # this server: rack B
PEERS = [("p-a1", "http://10.0.0.11", "rack-a"), ("p-none", "http://10.0.0.20", None),
         ("p-b2", "http://10.0.0.12", "rack-b"), ("p-a2", "http://10.0.0.13", "rack-a")]
MAC = "52:54:00:aa:00:01"


@pytest.fixture
def rig(tmp_path: Path):
    data = tmp_path / "data"
    write_fake_image(data)
    config = parse_config(f'data_dir = "{data}"\n[cluster]\nname = "me"\ngroup = "rack-b"\n{SUBNETS}')
    store = Store.for_config(config)
    cluster = Cluster(config, store, "10.0.0.1", ME)
    cluster._beat_once()  # scans the image, registers this server
    held = cluster.held["demo"]
    now = time.time()
    for name, base, group in PEERS:
        store.servers.heartbeat(ServerRecord(name=name, address=base[7:], http_base=base, images={"demo": held},
                                     started=now, last_seen=now, group=group))
    store.servers.heartbeat(ServerRecord(name="p-other-image", address="10.0.0.30", http_base="http://10.0.0.30",
                                 images={"demo": {**held, "rootfs.squashfs": "0" * 64}}, started=now,
                                 last_seen=now, group="rack-a"))  # another build: never named
    cluster._refresh_peers()
    booter = Booter(config, store.directory, "10.0.0.1", mirrors=cluster.mirrors)
    yield store, cluster, booter, Namespace(data, booter)
    store.close()


def _urls(script: bytes) -> list[str]:
    """The root URLs of the script's first kernel command (the others are its fall-backs)."""
    line = next(ln for ln in script.decode().splitlines() if "ramboot.url=" in ln)
    return re.findall(r"ramboot\.url=(\S+)", line.split("||")[0])


def _bases(urls: list[str]) -> list[str]:
    return [u.split("/images/")[0] for u in urls]


@pytest.mark.parametrize(("requester", "first"), [
    ("10.60.1.120", ["http://10.0.0.11", "http://10.0.0.13"]),  # rack A: A's two servers, then the rest
    ("10.60.2.120", [ME, "http://10.0.0.12"]),  # rack B: this server (B), then B's peer
    ("10.99.0.5", [ME]),  # a subnet of no group: this server first, as with no groups at all
])
def test_the_mirror_list_names_the_nodes_group_first(rig, requester, first) -> None:
    _, _, _, ns = rig
    got = ns.resolve(names.script(MAC), requester=requester)
    assert got is not None
    bases = _bases(_urls(got.data))
    assert len(bases) == 4 and bases[: len(first)] == first, bases  # MAX_MIRRORS in all
    assert "http://10.0.0.30" not in bases  # a server holding a different build is never named


def test_a_node_with_a_fixed_address_takes_the_group_of_its_subnet(rig) -> None:
    store, _, booter, _ = rig
    store.nodes.put(NodeSpec(mac=MAC, image="demo", ip="10.60.1.140"))
    d = booter.decide(Client(MAC))
    assert d is not None and d.mirrors[:2] == ("http://10.0.0.11", "http://10.0.0.13"), d.mirrors


def test_the_servers_table_keeps_each_servers_group(rig) -> None:
    store, _, _, _ = rig
    got = {s.name: s.group for s in store.servers.all()}
    assert got["me"] == "rack-b" and got["p-a1"] == "rack-a" and got["p-none"] is None
