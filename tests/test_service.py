"""The service layer, driven directly: every operation on nodes and profiles, its checks and
warnings, and the `effective` view (what a node really boots, from `policy.decide()`).

The API (tests/test_api.py) and the CLI (tests/test_node_cli.py) are front ends over it.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import write_fake_image
from ramboot.config import parse_config
from ramboot.inventory import schemas as S
from ramboot.inventory.service import Conflict, NotFound, Service, ServiceError
from ramboot.inventory.store import EventRecord, LeaseRecord, Store
from ramboot.lab.vm import events_from_api
from ramboot.policy import Booter
from ramboot.proto.dhcp_core import lease_key
from ramboot.proto.pxe import Client

MAC = "52:54:00:12:34:56"
ISO_UTC = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$"


def service(data_dir: Path, extra: str = "") -> Service:
    config = parse_config(f'data_dir = "{data_dir}"\n{extra}')
    store = Store.for_config(config)
    return Service(config, store, Booter(config, store.directory, "172.22.33.2"))


@pytest.fixture
def svc(data_dir: Path):
    write_fake_image(data_dir, "demo")
    write_fake_image(data_dir, "debian")
    s = service(data_dir, '[boot]\ndefault_image = "demo"\nkernel_args = "console=ttyS0"\n')
    yield s
    s.store.close()


def test_add_refuses_an_existing_mac_unless_replace(svc):
    detail, created = svc.add_node("52-54-00-12-34-56", S.NodeIn(image="demo", hostname="n1"))
    assert created and detail.mac == MAC and detail.hostname == "n1"
    with pytest.raises(Conflict, match=f"node {MAC} exists: `node set`"):
        svc.add_node(MAC.upper(), S.NodeIn(image="debian"))
    assert svc.show_node(MAC).hostname == "n1"  # nothing changed
    detail, created = svc.add_node(MAC, S.NodeIn(image="debian"), replace=True)
    assert not created and detail.image == "debian" and detail.hostname is None  # replaced whole


def test_patch_changes_only_what_it_names(svc):
    svc.put_profile("compute", S.ProfileIn(image="debian"))
    svc.add_node(MAC, S.NodeIn(image="demo", hostname="n1", labels={"rack": "a1", "row": "3"}, kernel_args="quiet"))
    d = svc.patch_node("5254.0012.3456", {"hostname": "n2", "labels": {"row": None, "pdu": "2"}})
    assert (d.hostname, d.image, d.kernel_args) == ("n2", "demo", "quiet")
    assert d.labels == {"rack": "a1", "pdu": "2"}  # merged key by key; null removed one
    d = svc.patch_node(MAC, {"image": None, "profiles": ["compute"], "kernel_args": None})
    assert d.image is None and d.profiles == ["compute"] and d.kernel_args == "" and d.hostname == "n2"
    assert (d.effective.image, d.effective.image_from) == ("debian", "profile:compute")


@pytest.mark.parametrize("patch,fragment", [
    ({"colour": "red"}, "colour: unknown field"),
    ({"hostname": "bad_host!"}, "hostname: a hostname is labels of letters, digits and '-'"),
    ({"ip": "300.1.1.1"}, "ip:"),
    ({"profiles": ["nosuch"]}, "no profile 'nosuch'"),
    ({"overlays": ["nosuch"]}, "no overlay 'nosuch'"),
    ([1, 2], "a merge patch is a JSON object"),
])
def test_a_bad_patch_changes_nothing(svc, patch, fragment):
    svc.add_node(MAC, S.NodeIn(image="demo", hostname="n1"))
    with pytest.raises(ServiceError, match=re.escape(fragment)) as e:
        svc.patch_node(MAC, patch)
    assert "^" not in str(e.value) and "\n" not in str(e.value)  # words, never the regular expression
    assert svc.show_node(MAC).hostname == "n1"


def test_a_patch_checks_only_what_it_names(data_dir):
    s = service(data_dir)
    s.put_profile("compute", S.ProfileIn())
    s.add_node(MAC, S.NodeIn(profiles=["compute"], loader="grub"))
    s.remove_profile("compute")  # nodes that name it keep their settings
    proxy = service(data_dir, '[dhcp]\nmode = "proxy"\n')
    d = proxy.patch_node(MAC, {"hostname": "n1"})  # neither the gone profile nor the loader blocks it
    assert d.hostname == "n1" and d.profiles == ["compute"] and d.loader == "grub"
    with pytest.raises(ServiceError, match="no profile 'compute'"):
        proxy.patch_node(MAC, {"profiles": ["compute"]})
    proxy.store.close()
    s.store.close()


def test_patch_of_a_node_not_registered_is_not_found(svc):
    with pytest.raises(NotFound, match=f"no node {MAC}"):
        svc.patch_node(MAC, {"image": "demo"})


def test_names_are_checked(svc, data_dir):
    with pytest.raises(ServiceError, match="no profile 'nosuchprofile'"):
        svc.add_node(MAC, S.NodeIn(profiles=["nosuchprofile"]))
    with pytest.raises(ServiceError, match="no overlay 'motd'"):
        svc.put_profile("compute", S.ProfileIn(overlays=["motd"]))
    (data_dir / "overlays" / "motd").mkdir(parents=True)
    p, created = svc.put_profile("compute", S.ProfileIn(image="nosuch", overlays=["motd"]))
    assert created and p.warnings == [
        "image 'nosuch' is not built yet; the node will not boot until it is built (`ramboot image list` shows "
        "those built)"]
    with pytest.raises(NotFound):
        svc.show_node(MAC)  # nothing was written by the refused add
    d, _ = svc.add_node(MAC, S.NodeIn(image="nosuch2", profiles=["compute"]))
    assert len(d.warnings) == 1 and "'nosuch2' is not built yet" in d.warnings[0]


def test_grub_in_proxy_mode_is_refused(data_dir):
    s = service(data_dir, '[dhcp]\nmode = "proxy"\n')
    with pytest.raises(ServiceError, match='loader "grub" cannot boot with dhcp.mode = "proxy"'):
        s.add_node(MAC, S.NodeIn(loader="grub"))
    s.add_node(MAC, S.NodeIn())
    with pytest.raises(ServiceError, match="proxy"):
        s.patch_node(MAC, {"loader": "grub"})


def test_a_store_refusal_is_a_conflict(svc):
    svc.add_node(MAC, S.NodeIn(ip="172.22.33.60"))
    with pytest.raises(Conflict, match="address 172.22.33.60 is already fixed for " + MAC):
        svc.add_node("52:54:00:12:34:57", S.NodeIn(ip="172.22.33.60"))


def test_effective_says_what_the_node_boots_and_where_it_came_from(svc):
    svc.put_profile("compute", S.ProfileIn(image="debian", kernel_args="mitigations=off"))
    svc.add_node(MAC, S.NodeIn(hostname="n1", profiles=["compute"], kernel_args="quiet"))
    e = svc.show_node(MAC).effective
    assert (e.image, e.image_from, e.loader) == ("debian", "profile:compute", "ipxe")
    assert e.kernel_args == "console=ttyS0 mitigations=off quiet" and e.profiles == ["compute"]
    assert (e.ip, e.ip_from, e.lease_expires, e.last_seen, e.last_boot) == (None, None, None, None, None)
    # its own image wins; the one decider says so (the boot script names the same image)
    d = svc.patch_node(MAC, {"image": "demo"})
    assert (d.effective.image, d.effective.image_from) == ("demo", "node")
    assert svc.booter.decide(Client(MAC)).image == "demo"
    # a lease: its address and expiry; then a fixed address wins
    now = time.time()
    svc.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.150", mac=MAC, expires=now + 600)])
    svc.store.events.add([EventRecord(MAC, "dhcp-ack", now - 5), EventRecord(MAC, "booted", now - 1, "node")])
    e = svc.show_node(MAC).effective
    assert (e.ip, e.ip_from) == ("172.22.33.150", "lease")
    assert e.lease_expires is not None and abs(e.lease_expires.timestamp() - (now + 600)) < 0.01
    assert e.last_seen is not None and abs(e.last_seen.timestamp() - (now - 1)) < 0.01
    assert e.last_boot is not None and abs(e.last_boot.timestamp() - (now - 5)) < 0.01
    [listed] = svc.list_nodes()
    assert listed.effective == e  # the list and the detail agree
    svc.patch_node(MAC, {"ip": "172.22.33.60"})
    e = svc.show_node(MAC).effective
    assert (e.ip, e.ip_from, e.lease_expires) == ("172.22.33.60", "fixed", None)


def test_effective_for_machines_nobody_registered(data_dir):
    for policy, image, source in (("boot", "demo", "default"), ("ignore", None, None)):
        (data_dir / policy).mkdir()
        s = service(data_dir / policy, f'[boot]\nunknown_nodes = "{policy}"\n')
        s.store.events.add([EventRecord(MAC, "dhcp-offer", time.time())])
        [n] = s.list_nodes()
        assert n.state == "seen" and (n.effective.image, n.effective.image_from) == (image, source)
        assert s.show_node(MAC).effective == n.effective
        s.store.close()


def test_every_time_is_iso_8601_in_utc(svc):
    svc.add_node(MAC, S.NodeIn(image="demo"))
    now = time.time()
    svc.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.150", mac=MAC, expires=now + 60)])
    svc.store.events.add([EventRecord(MAC, "dhcp-ack", now - 2), EventRecord(MAC, "booted", now, "node")])
    svc.store.hardware.add(MAC, {"memory_kib": 1})
    detail = json.loads(svc.show_node(MAC).model_dump_json())
    times = [detail["updated"], detail["last_boot"]["started"], detail["last_boot"]["updated"],
             detail["inventory"]["at"], *(e["at"] for e in detail["last_boot"]["events"]),
             *(detail["effective"][k] for k in ("lease_expires", "last_seen", "last_boot"))]
    times += [lease["expires"] for lease in json.loads(json.dumps([x.model_dump(mode="json")
                                                                    for x in svc.list_leases()]))]
    assert len(times) == 10
    for t in times:
        assert re.match(ISO_UTC, t), t
    assert abs(datetime.fromisoformat(detail["updated"]).timestamp() - now) < 0.001
    # what `lab vm` reads back from the API is the same instant
    marks = events_from_api([e.model_dump(mode="json") for e in svc.node_events(MAC, 10)], now - 3)
    assert [m.stage for m in marks] == ["dhcp-ack", "booted"] and abs(marks[-1].at - now) < 0.001


def test_remove_and_profiles(svc):
    svc.add_node(MAC, S.NodeIn())
    svc.remove_node(MAC.replace(":", "-"))
    with pytest.raises(NotFound):
        svc.remove_node(MAC)
    p, created = svc.put_profile("compute", S.ProfileIn(image="demo"))
    assert created and p.warnings == []
    assert [x.name for x in svc.list_profiles()] == ["compute"] and svc.show_profile("compute").image == "demo"
    with pytest.raises(ServiceError, match="not a name"):
        svc.show_profile("../x")
    svc.remove_profile("compute")
    with pytest.raises(NotFound, match="no profile compute"):
        svc.show_profile("compute")


def test_status_rows_and_the_live_feed_say_the_same_effective(svc):
    svc.put_profile("compute", S.ProfileIn(image="debian"))
    svc.add_node(MAC, S.NodeIn(profiles=["compute"]))
    svc.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.150", mac=MAC,
                                       expires=time.time() + 600)])
    [row] = svc.status()
    assert row.effective == svc.show_node(MAC).effective
    assert (row.effective.image_from, row.effective.ip) == ("profile:compute", "172.22.33.150")
    other = "52:54:00:00:00:99"
    live = svc.status([MAC, other])  # the live feed's rows: known or not
    assert [(r.mac, r.effective.image_from) for r in live] == [(other, "default"), (MAC, "profile:compute")]
