#!/usr/bin/env python3
"""DHCP: perfdhcp rate sweep against Kea, dnsmasq and ramboot (full mode).

Set-up exactly like BASELINES.md: two namespaces joined by a veth pair, the
server on 10.77.0.1/16, perfdhcp on 10.77.255.254/16 running
`perfdhcp -4 -l IF -r RATE -R 1000000 -p SECONDS`. Every rate point gets a
fresh namespace pair and a fresh server with an empty lease database, so the
pool (10.77.1.0-10.77.200.255, 51,200 addresses) never runs out and no point
inherits another's state.

For each server it reports the highest offered rate at which both exchanges
(DISCOVER-OFFER and REQUEST-ACK) dropped under 1 %, and the ratio to Kea.
The servers are measured in turn at each rate of one ladder (a failing point
is retried once; a server leaves after two failing rates in a row), so load
from other jobs on the machine hits all of them alike.

ramboot runs as `ramboot serve --config FILE` with its normal durable lease
store (SQLite, WAL): no in-memory shortcut.

Usage: .venv/bin/python bench/dhcp_bench.py [--duration 10] [--servers kea,dnsmasq,ramboot] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's ramboot, and the bench package

from bench.util import Child, NetnsPair, cpu_seconds, have, ramboot_exe, ratio, rss_bytes, run, table  # noqa: E402

POOL = ("10.77.1.0", "10.77.200.255")
LADDER = [50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10000, 12000, 15000, 20000]
DROP_LIMIT = 1.0  # percent


@dataclass
class Point:
    rate: int
    achieved: float = 0.0
    drops_do: float = 100.0
    drops_ra: float = 100.0
    delay_do_ms: float = 0.0
    delay_ra_ms: float = 0.0
    server_cpu_s: float = 0.0
    server_rss_mb: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.drops_do < DROP_LIMIT and self.drops_ra < DROP_LIMIT


@dataclass
class Result:
    server: str
    points: list[Point] = field(default_factory=list)
    error: str = ""

    @property
    def best(self) -> Point | None:
        good = [p for p in self.points if p.ok]
        return max(good, key=lambda p: p.rate) if good else None


# -- the servers -------------------------------------------------------------


def start_kea(net: NetnsPair, work: Path, lease_database: dict[str, Any] | None = None) -> Child:
    """Kea on the server side of `net`; its lease database is memfile (persisted) unless given."""
    os.makedirs("/run/kea", exist_ok=True)
    leases = lease_database or {
        "type": "memfile", "persist": True, "name": str(work / "kea-leases4.csv"), "lfc-interval": 0,
    }
    cfg = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [net.srv_if], "dhcp-socket-type": "raw"},
            "lease-database": leases,
            "valid-lifetime": 3600,
            "subnet4": [{"id": 1, "subnet": "10.77.0.0/16", "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}]}],
            "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "stderr"}]}],
        }
    }
    return run_kea(net, work, "kea", cfg, "DHCP4")


def run_kea(net: NetnsPair, work: Path, name: str, cfg: dict[str, Any], family: str) -> Child:
    """Kea (`kea-dhcp4` or `kea-dhcp6`, by `family`) in the server namespace with `cfg`, once it has started."""
    conf, log = work / f"{name}.json", work / f"{name}.log"
    conf.write_text(json.dumps(cfg, indent=1))
    env = dict(os.environ, KEA_PIDFILE_DIR=str(work), KEA_LOCKFILE_DIR=str(work))
    c = Child(net.exec(net.srv, f"kea-{family.lower()}", "-c", str(conf)), log=log, env=env)
    _settle(c, lambda: f"{family}_STARTED" in _read(log) or f"{family}_MULTI_THREADING_INFO" in _read(log))
    return c


def start_dnsmasq(net: NetnsPair, work: Path) -> Child:
    cmd = [
        "dnsmasq", "--no-daemon", "--no-ping", "--port=0", "--conf-file=/dev/null", "--pid-file=",
        f"--interface={net.srv_if}", "--bind-interfaces",
        f"--dhcp-range={POOL[0]},{POOL[1]},1h", f"--dhcp-leasefile={work / 'dnsmasq.leases'}",
        "--dhcp-lease-max=100000", "--dhcp-authoritative", "--log-facility=-",
    ]
    c = Child(net.exec(net.srv, *cmd), log=work / "dnsmasq.log")
    _settle(c, lambda: "DHCP, IP range" in _read(work / "dnsmasq.log"))
    return c


def ramboot_config(net: NetnsPair, data_dir: Path, tftp_port: int = 16969, http_port: int = 18080) -> str:
    return f"""data_dir = "{data_dir}"
[network]
interface = "{net.srv_if}"
address = "{net.srv_ip}"
[dhcp]
mode = "full"
range = "{POOL[0]}-{POOL[1]}"
lease_time = 3600
[tftp]
port = {tftp_port}
[http]
port = {http_port}
https_port = 0
[security]
# perfdhcp's clients are all unregistered, as Kea's and dnsmasq's are: the whole pool for
# them, as the peers give it (the default cap keeps a quarter for registered nodes)
max_unknown_leases = 1000000
[boot]
default_image = "bench"
unknown_nodes = "boot"
"""


def start_ramboot(net: NetnsPair, work: Path, pure: bool = False) -> Child:
    data = work / "ramboot-data"
    data.mkdir(exist_ok=True)
    (work / "ramboot.toml").write_text(ramboot_config(net, data))
    env = dict(os.environ, RAMBOOT_PURE_PYTHON="1") if pure else None
    c = Child(net.exec(net.srv, ramboot_exe(), "serve", "--config", str(work / "ramboot.toml")),
              log=work / "ramboot.log", env=env)
    _settle(c, lambda: "serving on" in _read(work / "ramboot.log"), timeout=30)
    return c


# -- the same two on PostgreSQL (a throwaway cluster of this run's own, a fresh database per point) --
_PG = None


def _pg_db(server: str) -> tuple[str, str, str]:
    """(socket dir, database, ramboot URL) of a fresh database in this process's cluster."""
    global _PG
    import atexit
    import secrets

    from ramboot.lab.pg import TempCluster

    if _PG is None:
        _PG = TempCluster().start()
        atexit.register(_PG.stop)
    db = f"{server.replace('-', '_')}_{secrets.token_hex(3)}"
    return str(_PG.socket_dir), db, _PG.create_db(db)


def start_kea_pg(net: NetnsPair, work: Path) -> Child:
    """Kea with its PostgreSQL lease backend (Debian's kea-dhcp4 is built with it), schema by kea-admin."""
    sock, db, _url = _pg_db("kea")
    p = subprocess.run(["kea-admin", "db-init", "pgsql", "-u", "postgres", "-n", db, "-h", sock],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"kea-admin db-init pgsql: {(p.stderr or p.stdout).strip()[-300:]}")
    return start_kea(net, work, {"type": "postgresql", "name": db, "user": "postgres", "host": sock})


def start_ramboot_pg(net: NetnsPair, work: Path) -> Child:
    """ramboot with `[database] url = "postgresql://…"`: the conditional bind and NOTIFY of several servers."""
    _sock, _db, url = _pg_db("ramboot")
    data = work / "ramboot-data"
    data.mkdir(exist_ok=True)
    (work / "ramboot.toml").write_text(ramboot_config(net, data) + f'[database]\nurl = "{url}"\n')
    c = Child(net.exec(net.srv, ramboot_exe(), "serve", "--config", str(work / "ramboot.toml")),
              log=work / "ramboot.log")
    _settle(c, lambda: "serving on" in _read(work / "ramboot.log"), timeout=30)
    return c


def start_ramboot_pure(net: NetnsPair, work: Path) -> Child:
    """The same ramboot with its mypyc-compiled modules run from their .py source (RAMBOOT_PURE_PYTHON=1)."""
    return start_ramboot(net, work, pure=True)


SERVERS = {"kea": start_kea, "dnsmasq": start_dnsmasq, "ramboot": start_ramboot, "kea-pg": start_kea_pg,
           "ramboot-pg": start_ramboot_pg, "ramboot-pure": start_ramboot_pure}
NEEDS = {"kea": "kea-dhcp4", "dnsmasq": "dnsmasq", "ramboot": None, "kea-pg": "kea-dhcp4", "ramboot-pg": None,
         "ramboot-pure": None}


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def _settle(c: Child, ready: Callable[[], object], timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not c.alive():
            raise RuntimeError(f"server exited ({c.proc.returncode}): {c.tail(5)}")
        if ready():
            time.sleep(0.3)
            return
        time.sleep(0.05)
    c.stop()
    raise RuntimeError(f"server not ready after {timeout}s: {c.tail(5)}")


# -- perfdhcp ----------------------------------------------------------------

_SECTION = re.compile(r"\*\*\*Statistics for: (\S+)\*\*\*(.*?)(?=\*\*\*|\Z)", re.S)


def parse_perfdhcp(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"Rate: ([\d.]+) 4-way exchanges/second", out)
    res["achieved"] = float(m.group(1)) if m else 0.0
    for name, body in _SECTION.findall(out):
        d = re.search(r"drops ratio: ([\d.]+) %", body)
        sent = re.search(r"sent packets: (\d+)", body)
        recv = re.search(r"received packets: (\d+)", body)
        avg = re.search(r"avg delay: ([\d.]+) ms", body)
        if d:
            drops = float(d.group(1))
        elif sent and recv and int(sent.group(1)):
            drops = 100.0 * (1 - int(recv.group(1)) / int(sent.group(1)))
        else:
            drops = 100.0
        res[name] = (drops, float(avg.group(1)) if avg else 0.0)
    return res


def perfdhcp_cmd(iface: str, rate: int, duration: int) -> list[str]:
    return ["perfdhcp", "-4", "-l", iface, "-r", str(rate), "-R", "1000000", "-p", str(duration)]


def measure(server: str, rate: int, duration: int, keep: Path | None, net_tag: str | None = None) -> Point:
    """One run of perfdhcp at `rate` against `server`; `net_tag` names its namespaces (default: rbb…)."""
    pt = Point(rate)
    work = Path(tempfile.mkdtemp(prefix=f"rbb-dhcp-{server}-"))
    try:
        with NetnsPair(tag=net_tag) if net_tag else NetnsPair() as net:
            try:
                srv = SERVERS[server](net, work)
            except RuntimeError as e:
                pt.error = str(e)
                return pt
            try:
                cpu0 = cpu_seconds(srv.pid)
                r = run(*net.exec(net.cli, *perfdhcp_cmd(net.cli_if, rate, duration)),
                        check=False, timeout=duration + 60)
                pt.server_cpu_s = cpu_seconds(srv.pid) - cpu0
                pt.server_rss_mb = rss_bytes(srv.pid) / 2**20
                if not srv.alive():
                    pt.error = f"server died: {srv.tail(3)}"
                p = parse_perfdhcp(r.stdout)
                if "DISCOVER-OFFER" not in p:
                    pt.error = pt.error or f"perfdhcp: {(r.stderr or r.stdout).strip()[-300:]}"
                else:
                    pt.achieved = p["achieved"]
                    pt.drops_do, pt.delay_do_ms = p["DISCOVER-OFFER"]
                    pt.drops_ra, pt.delay_ra_ms = p.get("REQUEST-ACK", (100.0, 0.0))
            finally:
                srv.stop()
    finally:
        if keep:
            shutil.copytree(work, keep / f"{server}-{rate}", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return pt


def _line(server: str, pt: Point, note: str = "") -> str:
    return (f"  {server:8s} {pt.rate:6d}/s  achieved {pt.achieved:8.1f}"
            f"  drops {pt.drops_do:6.3f}% / {pt.drops_ra:6.3f}%"
            f"  delay {pt.delay_do_ms:.2f}/{pt.delay_ra_ms:.2f} ms  cpu {pt.server_cpu_s:.2f}s"
            + (f"  ERROR {pt.error}" if pt.error else "") + (f"  ({note})" if note else ""))


def sweep_all(
    servers: list[str], duration: int, starts: dict[str, int], keep: Path | None, verbose: bool
) -> list[Result]:
    """Walk the rate ladder once, measuring every still-running server at each rate in turn.

    Interleaving keeps a neighbour's load from favouring one server. A server
    leaves the sweep after two failing rates in a row (a failure is retried
    once first), or at once if it cannot start.
    """
    results = {s: Result(s) for s in servers}
    fails = {s: 0 for s in servers}
    active = list(servers)
    for rate in LADDER:
        for server in list(active):
            if rate < starts.get(server, 100):
                continue
            pt = measure(server, rate, duration, keep)
            if not pt.ok and not pt.error:
                retry = measure(server, rate, duration, keep)
                if retry.ok:
                    pt = retry
            res = results[server]
            res.points.append(pt)
            if verbose:
                print(_line(server, pt), flush=True)
            if pt.error and not any(p.ok for p in res.points):
                res.error = pt.error
                active.remove(server)
                continue
            fails[server] = 0 if pt.ok else fails[server] + 1
            if fails[server] >= 2:
                active.remove(server)
        if not active:
            break
    # refine once between each server's best rate and the next ladder rate
    for server, res in results.items():
        b = res.best
        if b is None:
            continue
        higher = [p.rate for p in res.points if p.rate > b.rate]
        if higher and min(higher) - b.rate > max(50, b.rate // 5):
            pt = measure(server, (b.rate + min(higher)) // 2, duration, keep)
            res.points.append(pt)
            if verbose:
                print(_line(server, pt, "refine"), flush=True)
    return [results[s] for s in servers]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="perfdhcp -p seconds per rate point (BASELINES: 10)")
    ap.add_argument("--servers", default="kea,dnsmasq,ramboot")
    ap.add_argument("--start", default="kea=1000,dnsmasq=50,ramboot=500", help="first rate per server")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", type=Path, help="keep each point's logs and configs here")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("dhcp_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not have("perfdhcp"):
        print("dhcp_bench: perfdhcp not installed (Debian: kea-admin)", file=sys.stderr)
        return 2
    starts = dict((k, int(v)) for k, v in (kv.split("=") for kv in a.start.split(",")))
    results: list[Result] = []
    names = []
    for name in a.servers.split(","):
        tool = NEEDS.get(name)
        if tool and not have(tool):
            results.append(Result(name, error=f"{tool} not installed"))
        else:
            names.append(name)
    if not a.quiet:
        print(f"dhcp: sweeping {', '.join(names)} (interleaved at each rate)", flush=True)
    results += sweep_all(names, a.duration, starts, a.keep, not a.quiet)

    kea = next((r.best.rate for r in results if r.server == "kea" and r.best), None)
    rows = []
    for r in results:
        b = r.best
        if b is None:
            rows.append([r.server, "-", "-", "-", "-", "-", r.error or "no rate under 1 % drops"])
            continue
        dora = b.achieved * a.duration or 1
        rows.append([
            r.server, f"{b.rate:,}", f"{b.drops_do:.3f}% / {b.drops_ra:.3f}%",
            f"{b.delay_do_ms:.2f} / {b.delay_ra_ms:.2f}",
            f"{1000 * b.server_cpu_s / dora:.3f}", ratio(b.rate, kea), "",
        ])
    print(table(["server", "max DORA/s <1% drops", "drops D-O / R-A", "avg delay ms", "CPU ms/DORA", "vs Kea", "note"],
                rows, title=f"DHCP: perfdhcp -4 -l IF -r RATE -R 1000000 -p {a.duration} (veth pair of namespaces)"))
    if a.json:
        a.json.write_text(json.dumps([{"server": r.server, "error": r.error, "best": r.best.rate if r.best else None,
                                       "points": [asdict(p) for p in r.points]} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
