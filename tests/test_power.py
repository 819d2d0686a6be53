"""Power without a VM: BMC URLs, sealed passwords (never printed, never returned), boot-once in
the policy seam and its use, the power timeline, the fleet's isolation of a silent BMC, console
capture's file and lines, and the counters in /metrics. The real BMC emulators are in
tests/test_power_vm.py."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from httpserver import LiveServer
from ramboot.config import parse_config
from ramboot.inventory.records import EventRecord, NodeSpec, ProfileSpec
from ramboot.inventory.store import Store, StoreError
from ramboot.inventory.timeline import split_boots
from ramboot.lab.server import ramboot_cmd
from ramboot.power import fleet
from ramboot.power.bmc import BmcError, parse
from ramboot.power.console import NodeConsole
from ramboot.proto.pxe import Client

MAC = "52:54:00:aa:cc:01"
SECRET = "pA55:w@rd/x"
URL = "ipmi://admin:pA55%3Aw%40rd%2Fx@10.0.9.21:6230"


@pytest.fixture
def store(data_dir: Path):
    s = Store.for_config(parse_config(f'data_dir = "{data_dir}"\n'))
    yield s
    s.close()


@pytest.mark.parametrize("url,redacted", [
    (URL, "ipmi://admin:***@10.0.9.21:6230"),
    ("ipmi://root:x@bmc-7.example", "ipmi://root:***@bmc-7.example"),
    ("redfish://a:b@[fd00::5]:8443/redfish/v1/Systems/abc-1?verify=false",
     "redfish://a:***@[fd00::5]:8443/redfish/v1/Systems/abc-1?verify=false"),
    ("redfish://a:b@10.1.1.1:443", "redfish://a:***@10.1.1.1"),
    ("libvirt:node-7", "libvirt:node-7"),
    ("libvirt:n7?uri=qemu+ssh://root@host/system", "libvirt:n7?uri=qemu+ssh://root@host/system"),
])
def test_bmc_urls_parse_and_redact(url: str, redacted: str) -> None:
    b = parse(url)
    assert b.redacted() == redacted
    assert parse(b.url(b.password)) == b  # the URL with the password is the same BMC again


@pytest.mark.parametrize("url,why", [
    ("ipmi://10.0.0.1", "give the user"),
    ("ipmi://admin:" + "p" * 21 + "@10.0.0.1", "20 characters"),
    ("ipmi://a:b@10.0.0.1/x", "no path"),
    ("ipmi://a:b@10.0.0.1:99999", "port"),
    ("redfish://a:b@h/redfish/v1/Managers/1", "Systems"),
    ("redfish://a:b@h?verify=no", "verify=false"),
    ("redfish://a:b@bad_host!", "host name"),
    ("libvirt:../etc", "domain"),
    ("libvirt:x?uri=a;rm", "uri"),
    ("http://a:b@h", "expected ipmi://"),
    ("ipmi://a:b@h\nx", "one short line"),
])
def test_bad_bmc_urls_are_one_line_without_the_password(url: str, why: str) -> None:
    with pytest.raises(BmcError) as e:
        parse(url)
    assert why in str(e.value) and "\n" not in str(e.value) and ":b@" not in str(e.value)


def test_password_is_sealed_kept_through_a_round_trip_and_dropped_with_the_node(store: Store, data_dir) -> None:
    store.nodes.put(NodeSpec(mac=MAC, bmc=URL))
    spec = store.nodes.get(MAC)
    assert spec.bmc == "ipmi://admin:***@10.0.9.21:6230"
    assert store.power.bmc(MAC).password == SECRET
    store.nodes.put(spec)  # what was read back, *** and all: the sealed password stays
    assert store.power.bmc(MAC).password == SECRET
    store.nodes.put(NodeSpec(mac=MAC, bmc="ipmi://admin:new@10.0.9.21:6230"))
    assert store.power.bmc(MAC).password == "new"
    raw = b"".join(p.read_bytes() for p in data_dir.glob("*.db*"))
    assert SECRET.encode() not in raw and b"admin:new@" not in raw
    store.nodes.remove(MAC)
    store.nodes.put(NodeSpec(mac=MAC, bmc="ipmi://admin:***@10.0.9.21:6230"))
    assert store.power.bmc(MAC).password is None  # the old node's password went with it
    with pytest.raises(StoreError, match="--bmc"):
        store.nodes.put(NodeSpec(mac=MAC, bmc="ipmi://nobody"))


def test_a_node_takes_its_last_profiles_bmc(store: Store) -> None:
    store.profiles.put(ProfileSpec(name="rack1", bmc="redfish://ops:one@10.0.0.1"))
    store.profiles.put(ProfileSpec(name="rack2", bmc="redfish://ops:two@10.0.0.2"))
    assert store.profiles.get("rack2").bmc == "redfish://ops:***@10.0.0.2"
    store.nodes.put(NodeSpec(mac=MAC, profiles=["rack1", "rack2"]))
    assert (store.power.bmc(MAC).host, store.power.bmc(MAC).password) == ("10.0.0.2", "two")
    store.nodes.put(NodeSpec(mac=MAC, profiles=["rack1", "rack2"], bmc="libvirt:n1"))
    assert store.power.bmc(MAC).domain == "n1"


def test_the_api_never_returns_a_bmc_password(data_dir: Path) -> None:
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir)
    try:
        st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"image": "demo", "bmc": URL})
        assert st == 201 and body["bmc"] == "ipmi://admin:***@10.0.9.21:6230", body
        st, body = srv.request("PUT", "/api/v1/profiles/p1", {"bmc": "redfish://a:topsecret@h1"})
        assert st == 201 and body["bmc"] == "redfish://a:***@h1", body
        everything = json.dumps([srv.request("GET", p)[1] for p in
                                 ("/api/v1/nodes", f"/api/v1/nodes/{MAC}", "/api/v1/profiles", "/api/v1/profiles/p1")])
        assert SECRET not in everything and "pA55" not in everything and "topsecret" not in everything
        st, body = srv.request("PUT", f"/api/v1/nodes/{MAC}", {"bmc": "ipmi://admin:sneaky@h/x"})
        assert st == 400 and "sneaky" not in json.dumps(body), body
        # A node may not forge a power event into its own timeline.
        st, body = srv.report(MAC, "events", {"stage": "power", "detail": {"action": "on"}})
        assert st == 400, body
    finally:
        srv.close()


def test_boot_once_is_decided_then_used_up_by_the_boot_that_ran_it(data_dir: Path) -> None:
    write_fake_image(data_dir, "demo")
    write_fake_image(data_dir, "memtest")
    srv = LiveServer(data_dir)
    try:
        srv.store.nodes.put(NodeSpec(mac=MAC, image="demo"))
        srv.store.nodes.set_boot_once(MAC, "memtest")
        assert srv.booter.decide(Client(mac=MAC)).image == "memtest"
        # A boot of the node's own image (under way before boot-once was set) does not use it up.
        srv.report(MAC, "events", {"stage": "download-done", "detail": {"url": "http://s/images/demo/rootfs.squashfs"}})
        assert srv.report(MAC, "events", {"stage": "booted", "detail": {}})[0] == 202
        assert srv.store.nodes.get(MAC).boot_once == "memtest"
        srv.report(MAC, "events", {"stage": "download-start", "detail": {}})  # a new boot
        srv.report(MAC, "events", {"stage": "download-done",
                                   "detail": {"url": "http://s/images/memtest/rootfs.squashfs"}})
        srv.events.flush()
        assert srv.report(MAC, "events", {"stage": "booted", "detail": {}})[0] == 202
        assert srv.store.nodes.get(MAC).boot_once is None
        assert srv.booter.decide(Client(mac=MAC)).image == "demo"
        srv.events.flush()
        assert "boot-once-done" in [e.stage for e in srv.store.events.of(MAC)]
    finally:
        srv.close()


def test_a_power_up_starts_a_boot_and_a_failed_one_is_a_note() -> None:
    ev = [EventRecord(MAC, "dhcp-ack", 1.0), EventRecord(MAC, "booted", 5.0),
          EventRecord(MAC, "power", 10.0, detail={"action": "off", "result": "ok"}),
          EventRecord(MAC, "power", 11.0, detail={"action": "on", "result": "error"}),
          EventRecord(MAC, "power", 12.0, detail={"action": "cycle", "result": "ok"}),
          EventRecord(MAC, "dhcp-ack", 14.0), EventRecord(MAC, "kernel", 15.0),
          EventRecord(MAC, "power", 16.0, detail={"action": "reset", "result": "ok"}),
          EventRecord(MAC, "dhcp-ack", 17.0), EventRecord(MAC, "booted", 20.0)]
    boots = split_boots(ev)
    assert [(b.started, b.stage) for b in boots] == [(1.0, "booted"), (12.0, "kernel"), (16.0, "booted")]
    assert boots[2].duration == 4.0


def test_a_silent_bmc_costs_its_own_timeout_and_the_others_go_on(store: Store) -> None:
    quiet = []
    for i in range(3):  # UDP sockets that never answer: BMCs that are down
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        quiet.append(s)
        store.nodes.put(NodeSpec(mac=f"52:54:00:aa:cc:1{i}", hostname=f"q{i}", labels={"rack": "r1"},
                                bmc=f"ipmi://admin:x@127.0.0.1:{s.getsockname()[1]}"))
    store.nodes.put(NodeSpec(mac="52:54:00:aa:cc:20", labels={"rack": "r1"}))  # no BMC at all
    store.nodes.put(NodeSpec(mac="52:54:00:aa:cc:21", labels={"rack": "r2"}))
    nodes = fleet.targets(store, ("q0",), False, {"rack": "r1"})
    assert [n.mac for n in nodes] == [f"52:54:00:aa:cc:1{i}" for i in range(3)] + ["52:54:00:aa:cc:20"]
    with pytest.raises(fleet.TargetError, match="nope"):
        fleet.targets(store, ("nope",), False, {})
    t0 = time.monotonic()
    out = sorted(fleet.run(store, nodes, "cycle", timeout=3), key=lambda o: o.mac)  # they come as they finish
    elapsed = time.monotonic() - t0
    assert elapsed < 3 * 3, elapsed  # in parallel, not one after the other
    assert all(not o.ok and o.state == "unknown" for o in out)
    assert "no answer" in out[0].error and "no BMC registered" in out[3].error
    assert "FAILED" in out[0].line() and "\n" not in out[0].line()
    power = [e for e in store.events.of("52:54:00:aa:cc:10") if e.stage == "power"]
    assert power and power[0].detail["result"] == "error"
    assert store.power.counts() == {("cycle", "error"): 3}
    for s in quiet:
        s.close()


def test_rate_spaces_the_starts(store: Store) -> None:
    for i in range(4):
        store.nodes.put(NodeSpec(mac=f"52:54:00:aa:cc:3{i}", labels={"r": "1"}))
    t0 = time.monotonic()
    list(fleet.run(store, store.nodes.all(), "on", rate=5))  # nodes without BMCs: the waves still pace them
    assert time.monotonic() - t0 >= 0.55


def test_power_cli_prints_one_line_per_node_and_json(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    run = lambda *a: subprocess.run([*ramboot_cmd(), *a, "--config", str(cfg)],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    assert run("node", "add", MAC, "--hostname", "n1", "--bmc", URL).stdout.count("***") == 1
    bad = run("node", "add", MAC, "--bmc", "ipmi://admin:leak@h/p")
    assert bad.returncode != 0 and "--bmc" in bad.stderr and "leak" not in bad.stderr
    st = run("power", "status", "n1", "--timeout", "1", "--json")
    assert st.returncode == 1 and json.loads(st.stdout)[0]["state"] == "unknown", st.stdout + st.stderr
    assert SECRET not in run("node", "show", MAC).stdout


def test_console_capture_file_rotates_and_lines_are_capped(tmp_path: Path) -> None:
    got: list[str] = []
    con = NodeConsole(MAC, tmp_path / "c.log", 200, 3, lambda mac, lines: got.extend(t for _, t in lines))
    con.feed(b"SeaBIOS (version 1.16)\r\n\x1b[2Jline one\r\n[    0.000] Linux vers")
    con.feed(b"ion 6.1\nfour\nfive\n")
    assert got == ["SeaBIOS (version 1.16)", "line one", "[    0.000] Linux version 6.1"]
    con.feed(b"iPXE initialising devices...\n" + b"x" * 150 + b"\n")
    assert got[-2:] == ["iPXE initialising devices...", "x" * 150]
    assert (tmp_path / "c.log.1").exists() and (tmp_path / "c.log").stat().st_size <= 200


def test_console_lines_join_the_last_boot(store: Store) -> None:
    from ramboot.config import parse_config
    from ramboot.inventory.service import Service
    from ramboot.policy import Booter

    cfg = parse_config('data_dir = "/nonexistent"\n')
    show = Service(cfg, store, Booter(cfg, store.directory, "127.0.0.1")).show_node

    store.nodes.put(NodeSpec(mac=MAC))
    store.power.add_console_lines(MAC, [(0.5, "old boot")], keep=10)
    store.events.add([EventRecord(MAC, "power", 100.0, detail={"action": "cycle", "result": "ok"}),
                      EventRecord(MAC, "booted", 110.0, source="node")])
    store.power.add_console_lines(MAC, [(101.0, "Linux version 6.1"), (109.0, "ramboot: booted")], keep=10)
    boot = show(MAC).last_boot
    assert [c.line for c in boot.console] == ["Linux version 6.1", "ramboot: booted"]
    store.power.add_console_lines(MAC, [(111.0 + i, f"l{i}") for i in range(12)], keep=10)
    assert len(store.power.console_lines(MAC, 0)) == 10
