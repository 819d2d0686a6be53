"""Real IPv6 clients against the real `ramboot serve` on a network with no IPv4 at all:
ISC dhclient -6 (as an OS, and as UEFI PXE and HTTP boot firmware would ask), perfdhcp -6,
a client behind ISC `dhcrelay -6`; then TFTP and HTTP over IPv6, and the leases in the store."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dhcp_netns import NetnsPair, need, sh
from ramboot.config import load_config
from ramboot.inventory.store import Store
from ramboot.macaddr import mac_hyphen

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("dhcp-netns")]

PREFIX = "fd00:231:7::/64"
SERVER6 = "fd00:231:7::1"
RANGE6 = "fd00:231:7::100-fd00:231:7::1ff"
RELAY6 = "fd00:231:9::3"  # the relay's address towards the server
RELAYED = "fd00:231:7::8001"  # the relay's address on the clients' link: in the served prefix
RAMBOOT = str(Path(sys.executable).parent / "ramboot")


def wait_dad(pair: NetnsPair, ns: str, timeout: float = 10) -> None:
    """IPv6 addresses are tentative (DAD) for a moment: a client bound to one cannot send yet."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = pair.run(ns, "ip", "-6", "addr").stdout
        if "tentative" not in out and "inet6" in out:
            return
        time.sleep(0.1)
    pytest.fail(f"IPv6 addresses in {ns} stay tentative")


def start_serve(pair: NetnsPair, tmp: Path) -> Path:
    """`ramboot serve` with IPv4 off entirely: no IPv4 address, `[dhcp] mode = "off"`, DHCPv6 full."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    cfg = tmp / "ramboot.toml"
    cfg.write_text(
        f'data_dir = "{data}"\n[network]\ninterface = "{pair.srv_if}"\naddress6 = "{SERVER6}"\n'
        '[dhcp]\nmode = "off"\n'
        f'[dhcp6]\nmode = "full"\nrange6 = "{RANGE6}"\nprefix = "{PREFIX}"\nlease_time = 600\n'
        '[http]\nport = 80\nhttps_port = 0\n[api]\ntoken = "interop-token-123"\n'
    )
    log = tmp / "serve.log"
    pair.popen(pair.srv_ns, RAMBOOT, "serve", "--config", str(cfg), stdout=subprocess.DEVNULL,
               stderr=open(log, "ab"))
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if "serving on" in log.read_text():
            return cfg
        time.sleep(0.1)
    pytest.fail(f"ramboot serve did not start: {log.read_text()[-2000:]}")


def ipv6_only(pair: NetnsPair) -> None:
    """No IPv4 anywhere: NetnsPair gave the server one, take it away; the server's IPv6 address."""
    sh("ip", "-n", pair.srv_ns, "addr", "flush", "dev", pair.srv_if, "scope", "global")
    sh("ip", "-n", pair.srv_ns, "addr", "add", f"{SERVER6}/64", "dev", pair.srv_if, "nodad")
    wait_dad(pair, pair.srv_ns)
    wait_dad(pair, pair.cli_ns)


@pytest.fixture(scope="module")
def v6(tmp_path_factory):
    need("dhclient", "perfdhcp", "dhcrelay", "curl", "tftp")
    tmp = tmp_path_factory.mktemp("dhcp6")
    pair = NetnsPair(bridge=True)
    try:
        ipv6_only(pair)
        cfg = start_serve(pair, tmp)
        yield pair, tmp, cfg
    finally:
        pair.close()


def dhclient6(pair: NetnsPair, tmp: Path, conf: str = "", ns: str | None = None, ifname: str | None = None,
              timeout: float = 30) -> dict[str, str]:
    """One ISC dhclient -6 run; its script's environment on BOUND6."""
    tag = f"{time.monotonic_ns()}"
    out = tmp / f"dhclient6-{tag}.env"
    script = tmp / f"dhclient6-{tag}.sh"
    script.write_text(f'#!/bin/sh\n[ "$reason" = BOUND6 ] && env > "{out}"\nexit 0\n')
    script.chmod(0o755)
    cf = tmp / f"dhclient6-{tag}.conf"
    cf.write_text("option dhcp6.bootfile-url code 59 = string;\n"
                  "option dhcp6.client-arch code 61 = unsigned integer 16;\n"
                  "option dhcp6.vclass code 16 = {integer 32, integer 16, string};\n"
                  "option dhcp6.uclass code 15 = {integer 16, string};\n"
                  "also request dhcp6.bootfile-url;\n" + conf)
    p = pair.popen(ns or pair.cli_ns, "dhclient", "-6", "-1", "-d", "-v", "-cf", str(cf),
                   "-lf", str(tmp / f"{tag}.leases"), "-pf", str(tmp / f"{tag}.pid"), "-sf", str(script),
                   ifname or pair.cli_if, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + timeout
    while not out.exists() and p.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.05)
    pair.stop(p)
    if not out.exists():
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        pytest.fail(f"dhclient -6 got no lease: {err[-1500:]}")
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def stored_leases(cfg: Path, mac: str, ip: str) -> list[str]:
    """The addresses the leases table holds for `mac`, once it holds `ip` (or after 5 s): the Reply left
    once the lease was in the running server's lease journal, and the table catches up within
    CHECKPOINT_EVERY."""
    end = time.monotonic() + 5
    while True:
        store = Store.for_config(load_config(cfg))
        try:
            got = [x.ip for x in store.leases.leases_of(mac)]
        finally:
            store.close()
        if ip in got or time.monotonic() > end:
            return got
        time.sleep(0.1)


def client_mac(pair: NetnsPair, ns: str, ifname: str) -> str:
    return pair.run(ns, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()


def in_range(addr: str) -> bool:
    import ipaddress
    first, last = (ipaddress.IPv6Address(a) for a in RANGE6.split("-"))
    return first <= ipaddress.IPv6Address(addr) <= last


FIRMWARE = [
    ("os", "", None),
    ("uefi", 'send dhcp6.client-arch 7;\nsend dhcp6.vclass 343 32 "PXEClient:Arch:00007:UNDI:003016";\n',
     f"tftp://[{SERVER6}]/snponly.efi"),
    ("uefi-http", 'send dhcp6.client-arch 16;\nsend dhcp6.vclass 343 33 "HTTPClient:Arch:00016:UNDI:003001";\n',
     f"http://[{SERVER6}]/snponly.efi"),
    ("ipxe", 'send dhcp6.uclass 4 "iPXE";\n', "http://[{server}]/boot/{mac}.ipxe"),
]


@pytest.mark.parametrize("fw, conf, url", FIRMWARE, ids=[f[0] for f in FIRMWARE])
def test_dhclient6_gets_a_lease_and_its_boot_url(v6, fw, conf, url):
    pair, tmp, cfg = v6
    env = dhclient6(pair, tmp, conf)
    assert in_range(env["new_ip6_address"]), env
    mac = client_mac(pair, pair.cli_ns, pair.cli_if)
    got = env.get("new_dhcp6_bootfile_url")
    assert got == (url.format(server=SERVER6, mac=mac_hyphen(mac)) if url else None)
    # durable: the lease is in the store, found by the client's MAC (its EUI-64 link-local source)
    assert env["new_ip6_address"] in stored_leases(cfg, mac, env["new_ip6_address"])


def test_tftp_and_http_answer_over_ipv6(v6):
    pair, tmp, _ = v6
    out = tmp / "got.efi"
    pair.run(pair.cli_ns, "tftp", "-6", SERVER6, "-m", "binary", "-c", "get", "snponly.efi", str(out))
    assert out.read_bytes() == (tmp / "data" / "loaders" / "snponly.efi").read_bytes()
    res = pair.run(pair.cli_ns, "curl", "-sS", "-g", f"http://[{SERVER6}]/boot.ipxe")
    assert f"http://[{SERVER6}]/boot/" in res.stdout  # the entry script names the server by its IPv6 address


def test_perfdhcp6_gets_leases(v6):
    pair, tmp, _ = v6
    wait_dad(pair, pair.cli_ns)  # the server's RAs give the client a SLAAC address: perfdhcp binds to it once it is not tentative
    res = pair.run(pair.cli_ns, "perfdhcp", "-6", "-l", pair.cli_if, "-r", "50", "-n", "100", "-R", "100",
                   "-p", "10", timeout=60, check=False)
    m = re.search(r"sent packets: (\d+)\s+received packets: (\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    sent = re.findall(r"sent packets: (\d+)", res.stdout)
    received = re.findall(r"received packets: (\d+)", res.stdout)
    # both exchanges (Solicit-Advertise, Request-Reply) answered, nearly all of them
    assert len(received) == 2 and int(received[1]) >= 90, res.stdout
    assert int(sent[0]) == 100


def perfdhcp6_received(pair: NetnsPair) -> list[int]:
    """perfdhcp -6, 20 clients at 10/s: the replies it received (Advertises, Replies)."""
    wait_dad(pair, pair.cli_ns)  # perfdhcp binds to the client's SLAAC address once it is not tentative
    res = pair.run(pair.cli_ns, "perfdhcp", "-6", "-l", pair.cli_if, "-r", "10", "-n", "20", "-R", "20", "-p", "4",
                   timeout=60, check=False)
    got = [int(n) for n in re.findall(r"received packets: (\d+)", res.stdout)]
    assert got, res.stdout + res.stderr
    return got


def test_no_reply_leaves_while_the_dhcp6_lease_journal_cannot_be_written(tmp_path: Path) -> None:
    """A lease that cannot be made durable withholds its Reply, as over IPv4
    (tests/test_dhcp_commit_failure.py): the data directory is a small tmpfs, filled up, so
    the lease journal's append fails. Advertises commit nothing and still leave; no Reply
    does. Once space is freed, the Requests are answered and their leases reach the table."""
    from test_dhcp_commit_failure import _fill

    need("perfdhcp")
    data = tmp_path / "data"
    data.mkdir()
    # room for the boot loaders `serve` puts there at start, then filled
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(data)], check=True)
    pair = NetnsPair(bridge=True)
    try:
        ipv6_only(pair)
        start_serve(pair, tmp_path)
        fill = _fill(data)
        advertises, replies = perfdhcp6_received(pair)
        assert advertises >= 15 and replies == 0, (advertises, replies)
        log = (tmp_path / "serve.log").read_text()
        assert "lease commit failed" in log and "No space left" in log, log[-2000:]
        fill.unlink()
        advertises, replies = perfdhcp6_received(pair)
        assert replies >= 15, (advertises, replies)
        end = time.monotonic() + 5
        while not sqlite3.connect(data / "ramboot.db").execute("select count(*) from leases6").fetchone()[0]:
            assert time.monotonic() < end, "the leases6 table never caught up with the journal"
            time.sleep(0.1)
    finally:
        pair.close()
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_client_behind_dhcrelay6_is_served(v6):
    """ISC dhcrelay -6 between the clients' link and the server: the Reply comes back through it.
    The served prefix is the clients' link (the relay's link address), as RFC 8415 §19.1.1 has it."""
    pair, tmp, _ = v6
    relay_ns, up = pair.add_host("y", f"{RELAY6}/64")
    sh("ip", "-n", pair.srv_ns, "addr", "add", "fd00:231:9::1/64", "dev", pair.srv_if, "nodad")
    cli_ns, down = pair.tag + "z", pair.tag + "zd"
    sh("ip", "netns", "add", cli_ns)
    pair.namespaces.append(cli_ns)
    sh("ip", "link", "add", down, "type", "veth", "peer", "name", down + "c")
    sh("ip", "link", "set", down, "netns", relay_ns)
    sh("ip", "link", "set", down + "c", "netns", cli_ns)
    sh("ip", "-n", relay_ns, "addr", "add", f"{RELAYED}/128", "dev", down, "nodad")
    sh("ip", "-n", relay_ns, "link", "set", down, "up")
    sh("ip", "-n", cli_ns, "link", "set", "lo", "up")
    sh("ip", "-n", cli_ns, "link", "set", down + "c", "up")
    wait_dad(pair, relay_ns)
    wait_dad(pair, cli_ns)
    pair.popen(relay_ns, "dhcrelay", "-6", "-d", "-I", "-l", down, "-u", f"fd00:231:9::1%{up}",
               stdout=subprocess.DEVNULL, stderr=open(tmp / "dhcrelay.log", "ab"))
    time.sleep(1.0)
    env = dhclient6(pair, tmp, ns=cli_ns, ifname=down + "c")
    assert in_range(env["new_ip6_address"])
    mac = client_mac(pair, cli_ns, down + "c")
    assert env["new_ip6_address"] in stored_leases(tmp / "ramboot.toml", mac, env["new_ip6_address"])
    assert "Traceback" not in (tmp / "serve.log").read_text()
