"""The REST API over real HTTP: CRUD, access rules, node reports, discover mode, OpenAPI, metrics, SSE."""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.request
from pathlib import Path
from unittest import mock

import pytest

from ramboot.proto.dhcp_core import lease_key
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from conftest import write_fake_image
from httpserver import LiveServer
from ramboot.config import parse_config
from ramboot.inventory.store import LeaseRecord
from ramboot.server import api
from ramboot.server.http_context import CTX, Ctx


MAC = "52:54:00:aa:bb:01"
TOKEN = "s3cret-token"
INVENTORY = {
    "cpu": {"model": "QEMU Virtual CPU", "count": 2},
    "memory_kib": 1024000,
    "nics": [{"name": "eth0", "mac": MAC, "speed_mbps": 1000}],
    "disks": [],
    "dmi": {"vendor": "QEMU", "product": "Standard PC", "serial": "", "uuid": "12345678-1234-1234-1234-1234567890ab"},
}


@pytest.fixture
def srv(data_dir: Path):
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, f'[api]\ntoken = "{TOKEN}"\n')
    yield s
    s.close()


def wait_for(pred, timeout: float = 5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_node_crud(srv):
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo", "hostname": "n1", "ip": "172.22.33.50"}, TOKEN)
    assert st == 201, body
    assert body["mac"] == MAC and body["hostname"] == "n1" and body["last_boot"] is None
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC.upper()}", {"image": "demo", "loader": "pxelinux"}, TOKEN)
    assert st == 200 and body["loader"] == "pxelinux" and body["hostname"] is None
    st, body = srv.request("POST", "/api/v1/nodes", {"mac": "52-54-00-aa-bb-02", "image": "demo"}, TOKEN)
    assert st == 201 and body["mac"] == "52:54:00:aa:bb:02"
    st, body = srv.request("POST", "/api/v1/nodes", {"mac": "52-54-00-aa-bb-02", "image": "demo"}, TOKEN)
    assert st == 409 and "exists" in body["error"]
    st, body = srv.request("GET", "/api/v1/nodes")
    assert st == 200 and [n["mac"] for n in body] == [MAC, "52:54:00:aa:bb:02"]
    st, body = srv.request("DELETE", f"/api/v1/nodes/{MAC}", token=TOKEN)
    assert st == 204
    st, body = srv.request("GET", f"/api/v1/nodes/{MAC}")
    assert st == 404 and body == {"error": f"no node {MAC}"}


@pytest.mark.parametrize(
    "method,path,body,status,fragment",
    [
        ("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo", "colour": "red"}, 400, "colour: unknown field"),
        ("PUT", f"/api/v1/nodes/{MAC}", {"ip": "300.1.1.1"}, 400, "ip:"),
        ("PUT", f"/api/v1/nodes/{MAC}", {"loader": "lilo"}, 400, "loader:"),
        ("PUT", "/api/v1/nodes/zz:zz", {"image": "demo"}, 400, "not a MAC address"),
        ("POST", "/api/v1/nodes", {"image": "demo"}, 400, "mac:"),
        ("GET", "/api/v1/nope", None, 404, "no such API endpoint"),
        ("DELETE", "/api/v1/images", None, 405, "not allowed"),
        ("GET", "/api/v1/images/nope", None, 404, "no image nope"),
        ("GET", f"/api/v1/nodes/{MAC}/events?limit=x", None, 400, "limit"),
    ],
)
def test_errors_are_json(srv, method, path, body, status, fragment):
    st, got = srv.request(method, path, body, TOKEN)
    assert st == status and fragment in got["error"], got


def test_malformed_json_body(srv):
    req = urllib.request.Request(f"{srv.base}/api/v1/nodes/{MAC}", data=b"{not json", method="PUT")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400 and "error" in json.loads(e.value.read())


def test_write_without_token_refused(srv):
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"})
    assert st == 401 and "bearer" in body["error"]
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}, "wrong")
    assert st == 403 and body["error"] == "wrong bearer token"
    st, body = srv.request("DELETE", f"/api/v1/nodes/{MAC}")
    assert st == 401
    assert srv.store.get_node(MAC) is None
    assert srv.request("GET", "/api/v1/nodes")[0] == 200  # reads are open by default


def test_reads_can_require_token(data_dir):
    s = LiveServer(data_dir, f'[api]\ntoken = "{TOKEN}"\nread_requires_token = true\n')
    try:
        assert s.request("GET", "/api/v1/nodes")[0] == 401
        assert s.request("GET", "/api/v1/nodes", token=TOKEN)[0] == 200
        assert s.request("GET", f"/api/v1/status?access_token={TOKEN}")[0] == 200
        # node reports need no token even then
        assert s.request("POST", f"/api/v1/nodes/{MAC}/events", {"stage": "initramfs"})[0] == 202
    finally:
        s.close()


def _mocked(remote: str, method: str, cfg_extra: str, headers: dict | None = None):
    app = web.Application()
    cfg = parse_config(cfg_extra)
    app[CTX] = Ctx(cfg, None, None, None, None)  # type: ignore[arg-type]
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda k, d=None: (remote, 40000) if k == "peername" else d
    return make_mocked_request(method, "/api/v1/nodes/x", headers=headers or {}, app=app, transport=transport)


def test_no_token_means_loopback_writes_only():
    api.authorize(_mocked("127.0.0.1", "PUT", ""), "write")
    api.authorize(_mocked("::1", "PUT", ""), "write")
    with pytest.raises(api.ApiError) as e:
        api.authorize(_mocked("172.22.33.100", "PUT", ""), "write")
    assert e.value.status == 403 and "loopback" in e.value.message
    api.authorize(_mocked("172.22.33.100", "GET", ""), "read")
    api.authorize(_mocked("172.22.33.100", "POST", ""), "node")
    req = _mocked("172.22.33.100", "PUT", '[api]\ntoken = "t"\n', {"Authorization": "Bearer t"})
    api.authorize(req, "write")


def test_node_reports_checked_against_lease(srv):
    srv.store.save_leases([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.101", mac=MAC, expires=time.time() + 600)])
    st, body = srv.request("POST", f"/api/v1/nodes/{MAC}/events", {"stage": "initramfs"})
    assert st == 403 and "does not hold the lease" in body["error"]
    st, body = srv.request("POST", f"/api/v1/nodes/{MAC}/inventory", INVENTORY)
    assert st == 403
    srv.store.save_leases([LeaseRecord(key=lease_key(None, MAC), ip="127.0.0.1", mac=MAC, expires=time.time() + 600)])
    assert srv.request("POST", f"/api/v1/nodes/{MAC}/events", {"stage": "initramfs"})[0] == 202
    # an expired lease is no lease: any address may report (proxy/off mode)
    other = "52:54:00:aa:bb:09"
    srv.store.save_leases([LeaseRecord(key=lease_key(None, other), ip="172.22.33.102", mac=other, expires=time.time() - 1)])
    assert srv.request("POST", f"/api/v1/nodes/{other}/events", {"stage": "initramfs"})[0] == 202


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"stage": "dhcp-ack"}, "recorded by the server"),
        ({"stage": "Bad Stage"}, "stage:"),
        ({"stage": "verified", "detail": {"mac": "x"}}, "reserved key"),
        ({"stage": "verified", "extra": 1}, "unknown field"),
    ],
)
def test_bad_node_events(srv, body, fragment):
    st, got = srv.request("POST", f"/api/v1/nodes/{MAC}/events", body)
    assert st == 400 and fragment in got["error"]


def post_boot(srv, mac: str, gap: float = 0.0) -> None:
    """A boot as the server and the node record it; server stages go through the event log."""
    for stage, detail in [("dhcp-offer", {}), ("dhcp-ack", {"ip": "127.0.0.1"}), ("script", {}), ("kernel", {}), ("initrd", {})]:
        srv.run(lambda s=stage, d=detail: srv.events.record(mac, s, **d))
        time.sleep(gap)
    for stage, detail in [
        ("initramfs", {}),
        ("download-start", {"url": "http://x/rootfs.squashfs"}),
        ("download-done", {"url": "http://x/rootfs.squashfs", "bytes": 50_000_000, "seconds": 0.5}),
        ("verified", {"sha256": "ab" * 32}),
        ("switch-root", {}),
        ("booted", {}),
    ]:
        st, _ = srv.request("POST", f"/api/v1/nodes/{mac}/events", {"stage": stage, "detail": detail})
        assert st == 202
        time.sleep(gap)


def test_boot_timeline_inventory_and_discover(data_dir):
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, '[boot]\nunknown_nodes = "discover"\ndefault_image = "demo"\n')
    try:
        post_boot(s, MAC)
        assert s.request("POST", f"/api/v1/nodes/{MAC}/inventory", INVENTORY)[0] == 202
        node = wait_for(lambda: s.request("GET", f"/api/v1/nodes/{MAC}")[1] if s.request("GET", f"/api/v1/nodes/{MAC}")[0] == 200 else None)
        assert node["discovered"] is True and node["image"] == "demo"
        assert node["uuid"] == "12345678-1234-1234-1234-1234567890ab"
        assert node["inventory"]["report"]["cpu"] == {"model": "QEMU Virtual CPU", "count": 2}
        # events reach the store in batches (every 0.2 s): wait for the whole boot, not its first events
        last_boot = lambda: s.request("GET", f"/api/v1/nodes/{MAC}")[1]["last_boot"]  # noqa: E731
        boot = wait_for(lambda: (b := last_boot()) and b["stage"] == "booted" and b)
        assert boot["stage"] == "booted"
        assert [e["stage"] for e in boot["events"]][:3] == ["dhcp-offer", "dhcp-ack", "script"]
        assert boot["download_mbps"] == pytest.approx(800.0)
        assert boot["duration"] is not None and boot["duration"] >= 0
        st, rows = s.request("GET", "/api/v1/status")
        assert [r["mac"] for r in rows] == [MAC] and rows[0]["last_boot"]["stage"] == "booted"
        st, invs = s.request("GET", f"/api/v1/nodes/{MAC}/inventory")
        assert st == 200 and invs[0]["report"]["memory_kib"] == 1024000
        st, evs = s.request("GET", f"/api/v1/nodes/{MAC}/events?limit=3")
        assert [e["stage"] for e in evs] == ["verified", "switch-root", "booted"]
        # an operator taking the node over clears "discovered"
        assert s.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"})[1]["discovered"] is False
    finally:
        s.close()


def test_boot_mode_does_not_register(srv):
    assert srv.request("POST", f"/api/v1/nodes/{MAC}/inventory", INVENTORY)[0] == 202
    assert srv.request("GET", f"/api/v1/nodes/{MAC}")[0] == 404
    assert srv.request("GET", f"/api/v1/nodes/{MAC}/inventory")[0] == 200


def test_images_and_leases(srv):
    st, imgs = srv.request("GET", "/api/v1/images")
    assert st == 200 and [i["name"] for i in imgs] == ["demo"]
    assert {f["name"] for f in imgs[0]["files"]} == {"vmlinuz", "initrd.img", "rootfs.squashfs"}
    st, img = srv.request("GET", "/api/v1/images/demo")
    assert st == 200 and img == imgs[0]
    srv.store.save_leases([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.150", mac=MAC, expires=time.time() + 60)])
    st, leases = srv.request("GET", "/api/v1/leases")
    assert leases == [{"ip": "172.22.33.150", "mac": MAC, "expires": pytest.approx(leases[0]["expires"]), "active": True, "client_id": None, "hostname": None}]


def test_openapi_document(srv):
    st, doc = srv.request("GET", "/api/v1/openapi.json")
    assert st == 200 and doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]

    def refs(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(o, list):
            for v in o:
                yield from refs(v)

    for r in refs(doc):
        assert r.startswith("#/components/schemas/") and r.rsplit("/", 1)[1] in schemas, r
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert method in ("get", "put", "post", "delete")
            assert op["responses"] and op["operationId"]
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), path
    # every API route the server answers is documented
    assert {f"{r.method.lower()} {api.PREFIX}{r.path}" for r in api.ROUTES} == {
        f"{m} {p}" for p, ops in doc["paths"].items() for m in ops
    }
    assert set(schemas["NodeIn"]["properties"]) >= {"image", "hostname", "ip", "loader", "kernel_args", "labels"}
    assert schemas["InventoryReport"]["properties"]["memory_kib"]["type"] == "integer"


def scrape(srv) -> dict[str, float]:
    with urllib.request.urlopen(f"{srv.base}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def test_metrics_show_the_boot(srv):
    before = scrape(srv)
    post_boot(srv, MAC)
    urllib.request.urlopen(f"{srv.base}/images/demo/vmlinuz", timeout=5).read()
    after = wait_for(lambda: (m := scrape(srv)) and m.get("ramboot_boot_duration_seconds_count", 0) > before.get("ramboot_boot_duration_seconds_count", 0) and m)
    d = lambda k: after.get(k, 0) - before.get(k, 0)  # noqa: E731
    assert d('ramboot_boots_total{stage="booted"}') == 1
    assert d('ramboot_boots_total{stage="dhcp-ack"}') == 1
    assert d("ramboot_root_download_mbps_count") == 1
    assert d("ramboot_root_download_mbps_sum") == pytest.approx(800.0)
    assert d('ramboot_http_bytes_total{kind="kernel"}') == len(b"kernel")
    assert d("ramboot_boot_duration_seconds_count") == 1


def test_sse_stream_follows_a_boot(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/api/v1/events/stream")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    assert resp.readline().startswith(b"retry:")
    post_boot(srv, MAC)
    stages = []
    deadline = time.time() + 10
    while time.time() < deadline and "booted" not in stages:
        line = resp.readline()
        if line.startswith(b"data: "):
            row = json.loads(line[6:])
            assert row["mac"] == MAC
            stages.append(row["last_boot"]["stage"])
    conn.close()
    assert stages[-1] == "booted"
