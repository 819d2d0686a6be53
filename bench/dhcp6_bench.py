#!/usr/bin/env python3
"""DHCPv6 side by side: Kea's kea-dhcp6 and ramboot at fixed rates, alternating, several rounds.

    .venv/bin/python bench/dhcp6_bench.py [--rates 500,1000,2000,3000] [--rounds 3] [--duration 10]
        [--before DIR/src]   # also an earlier ramboot, in the same rounds (before/after a change)

The set-up is bench/dhcp_bench.py's for IPv4 with IPv6 in it: a fresh veth pair
of namespaces and a fresh server with an empty, durable lease database per
point (Kea: memfile, persisted; ramboot: `ramboot serve` with its SQLite
store, `[dhcp] mode = "off"`, `[dhcp6] mode = "full"`), and
`perfdhcp -6 -l IF -r RATE -R 1000000 -p SECONDS` from the client side's
link-local address. A rate counts as sustained when the median round is under
1 % drops in both exchanges (Solicit-Advertise, Request-Reply); CPU per
exchange is the server's CPU time over the 4-way exchanges perfdhcp completed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's ramboot, and the bench package

from bench.dhcp_bench import Point, _read, _settle, parse_perfdhcp, run_kea  # noqa: E402
from bench.util import Child, NetnsPair, cpu_seconds, have, ramboot_exe, rss_bytes, run  # noqa: E402

PREFIX = "fd00:77::/64"
SERVER6 = "fd00:77::1"
POOL6 = ("fd00:77::1:0", "fd00:77::ffff:ffff")


def _ipv6_up(net: NetnsPair) -> None:
    """The server's address (no duplicate address detection), and both link-locals out of theirs."""
    run(*net.exec(net.srv, "ip", "addr", "add", f"{SERVER6}/64", "dev", net.srv_if, "nodad"))
    # perfdhcp sends from the client side's link-local address: no SLAAC address from ramboot's
    # router advertisements there (perfdhcp would bind to it while it is still tentative).
    run(*net.exec(net.cli, "sysctl", "-qw", f"net.ipv6.conf.{net.cli_if}.accept_ra=0"))
    end = time.monotonic() + 10
    for ns in (net.srv, net.cli):
        while "tentative" in run(*net.exec(ns, "ip", "-6", "addr"), check=False).stdout:
            if time.monotonic() > end:
                raise RuntimeError(f"IPv6 addresses in {ns} stay tentative")
            time.sleep(0.1)


def start_kea6(net: NetnsPair, work: Path) -> Child:
    cfg = {"Dhcp6": {
        "interfaces-config": {"interfaces": [net.srv_if]},
        "data-directory": str(work),
        "lease-database": {"type": "memfile", "persist": True, "name": str(work / "kea-leases6.csv"),
                           "lfc-interval": 0},
        "preferred-lifetime": 3600, "valid-lifetime": 3600,
        "subnet6": [{"id": 1, "subnet": PREFIX, "interface": net.srv_if,
                     "pools": [{"pool": f"{POOL6[0]} - {POOL6[1]}"}]}],
        "loggers": [{"name": "kea-dhcp6", "severity": "WARN", "output_options": [{"output": "stderr"}]}],
    }}
    return run_kea(net, work, "kea6", cfg, "DHCP6")


def start_ramboot6(net: NetnsPair, work: Path, src: Path | None = None) -> Child:
    """`src`: another tree's `src/` to run instead of this one's (the "ramboot-before" server)."""
    data = work / "ramboot-data"
    data.mkdir(exist_ok=True)
    (work / "ramboot.toml").write_text(f"""data_dir = "{data}"
[network]
interface = "{net.srv_if}"
address6 = "{SERVER6}"
[dhcp]
mode = "off"
[dhcp6]
mode = "full"
range6 = "{POOL6[0]}-{POOL6[1]}"
prefix = "{PREFIX}"
lease_time = 3600
[tftp]
port = 16969
[http]
port = 18080
https_port = 0
[boot]
default_image = "bench"
""")
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    c = Child(net.exec(net.srv, ramboot_exe(), "serve", "--config", str(work / "ramboot.toml")),
              log=work / "ramboot.log", env=env)
    _settle(c, lambda: "serving on" in _read(work / "ramboot.log"), timeout=30)
    return c


SERVERS: dict[str, Callable[[NetnsPair, Path], Child]] = {"kea": start_kea6, "ramboot": start_ramboot6}


def measure(server: str, rate: int, duration: int) -> Point:
    pt = Point(rate)
    work = Path(tempfile.mkdtemp(prefix=f"rbb-dhcp6-{server}-"))
    try:
        with NetnsPair(tag="rb6" + secrets.token_hex(3)) as net:
            try:
                _ipv6_up(net)
                srv = SERVERS[server](net, work)
            except RuntimeError as e:
                pt.error = str(e)
                return pt
            try:
                cpu0 = cpu_seconds(srv.pid)
                r = run(*net.exec(net.cli, "perfdhcp", "-6", "-l", net.cli_if, "-r", str(rate), "-R", "1000000",
                                  "-p", str(duration)), check=False, timeout=duration + 60)
                pt.server_cpu_s = cpu_seconds(srv.pid) - cpu0
                pt.server_rss_mb = rss_bytes(srv.pid) / 2**20
                p = parse_perfdhcp(r.stdout)
                if "SOLICIT-ADVERTISE" not in p:
                    pt.error = f"perfdhcp: {(r.stderr or r.stdout).strip()[-300:]}"
                else:
                    pt.achieved = p["achieved"]
                    pt.drops_do, pt.delay_do_ms = p["SOLICIT-ADVERTISE"]
                    pt.drops_ra, pt.delay_ra_ms = p.get("REQUEST-REPLY", (100.0, 0.0))
                if not srv.alive():
                    pt.error = f"server died: {srv.tail(3)}"
            finally:
                srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="500,1000,2000,3000,4000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="kea,ramboot")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--before", type=Path, metavar="SRC",
                    help="also run the ramboot of another tree's src/ (say `git archive REV src | tar -x -C DIR`,"
                         " then DIR/src) as the server ramboot-before, in the same rounds")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("dhcp6_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("perfdhcp", "kea-dhcp6"):
        if not have(tool):
            print(f"dhcp6_bench: {tool} not installed (Debian: kea-admin, kea-dhcp6-server)", file=sys.stderr)
            return 2
    servers = a.servers.split(",")
    if a.before is not None:
        before = a.before.resolve()
        SERVERS["ramboot-before"] = lambda net, work: start_ramboot6(net, work, before)
        servers.append("ramboot-before")
    points: dict[tuple[str, int], list[Point]] = {}
    for rate in (int(r) for r in a.rates.split(",")):
        for rnd in range(a.rounds):
            for server in (servers if rnd % 2 == 0 else servers[::-1]):
                load = open("/proc/loadavg").read().split()[0]
                pt = measure(server, rate, a.duration)
                points.setdefault((server, rate), []).append(pt)
                print(f"  round {rnd + 1}  load {load:>5}  {server:14s} {rate:6d}/s  achieved {pt.achieved:8.1f}"
                      f"  drops {pt.drops_do:6.3f}% / {pt.drops_ra:6.3f}%  delay {pt.delay_do_ms:.2f}/"
                      f"{pt.delay_ra_ms:.2f} ms  cpu {pt.server_cpu_s:.2f}s" + (f"  ERROR {pt.error}" if pt.error
                                                                              else ""), flush=True)
    print(f"\nDHCPv6: perfdhcp -6 -l IF -r RATE -R 1000000 -p {a.duration} (veth pair of namespaces)")
    print(f"{'server':14s} {'rate':>6s}  {'median drops S-A / R-R':>24s}  {'median delay ms':>16s}"
          f"  {'CPU ms/exch':>11s}  ok rounds")
    best: dict[str, int] = {}
    cpu_at: dict[tuple[str, int], float] = {}
    for (server, rate), pts in points.items():
        sa = statistics.median(p.drops_do for p in pts)
        rr = statistics.median(p.drops_ra for p in pts)
        dl = statistics.median(p.delay_ra_ms for p in pts)
        cpu = cpu_at[(server, rate)] = statistics.median(
            1000 * p.server_cpu_s / max(1.0, p.achieved * a.duration) for p in pts)
        print(f"{server:14s} {rate:6d}  {sa:10.3f}% / {rr:8.3f}%  {dl:16.2f}  {cpu:11.3f}  {sum(p.ok for p in pts)}/"
              f"{len(pts)}")
        if sa < 1 and rr < 1:
            best[server] = max(best.get(server, 0), rate)
    for server in servers:
        print(f"{server}: highest rate with median drops under 1 % in both exchanges: {best.get(server, 0):,}/s")
    for server in ("ramboot", "ramboot-before"):
        if best.get("kea") and server in best:
            print(f"{server} / kea: {best[server] / best['kea']:.2f}")
    if a.json:
        a.json.write_text(json.dumps({f"{s}@{r}": [asdict(p) for p in v] for (s, r), v in points.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
