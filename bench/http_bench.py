#!/usr/bin/env python3
"""HTTP: a 200 MB root image from nginx vs from ramboot's HTTP server.

Both servers serve the same file from the same directory on the loopback of a
namespace the benchmark creates (`rbb<random>-s`), one after the other. The
load is `wrk` (one thread, C connections, `--timeout 300s`) for 1, 10 and 100
concurrent clients, the servers interleaved round by round. For each it
reports the median over the rounds of aggregate MB/s, the server's CPU
seconds per GB sent (utime+stime of the server's whole process tree, from
/proc/PID/stat) and the server's peak RSS, which must stay flat in the number
of clients.

nginx is tuned the usual way: `worker_processes auto` (2 here), `sendfile on`,
`tcp_nopush on`, `access_log off`. ramboot runs as `ramboot serve` with DHCP off
and `[serve] workers` at its default (one per core), and with `[scale] seed = false`
so that it, like nginx, sends every request at once; `ramboot+seed` keeps seeding
on, under which it sends at most `seed_fanout` root downloads at a time.
`NAME:N` runs a server with N worker processes (`nginx:1`, `ramboot:2`).

Usage: .venv/bin/python bench/http_bench.py [--size-mb 200] [--duration 10] [--clients 1,10,100]
       [--servers nginx,ramboot] [--also TREE [--also-as SUFFIXES]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's ramboot, and the bench package

from bench.util import (  # noqa: E402
    CLK_TCK,
    Child,
    NetnsPair,
    RssSampler,
    cpu_seconds,
    have,
    make_image,
    nginx_argv,
    ramboot_exe,
    ratio,
    run,
    table,
    tree,
)
from bench.util import _stat as proc_stat  # noqa: E402

PORT = 18480
URL_PATH = "/images/bench/rootfs.squashfs"


@dataclass
class Run:
    server: str
    clients: int
    mb_s: float = 0.0
    gb: float = 0.0
    requests: int = 0
    cpu_s: float = 0.0
    cpu_s_per_gb: float = 0.0
    rss_mb: float = 0.0
    user_s_per_gb: float = 0.0
    per_gb: dict[str, float] | None = None  # with --perf: system calls and softirqs per GB, whole process tree
    errors: str = ""


# --perf: what the server's processes do per GB (sendfile calls, loop wake-ups, and the softirqs
# run in their context: on loopback, the receiver's processing when the server's send transmits)
PERF_EVENTS = {"syscalls:sys_enter_sendfile64": "sendfile", "syscalls:sys_enter_epoll_wait": "epoll",
               "syscalls:sys_enter_epoll_pwait": "epoll", "irq:softirq_entry": "softirq"}


def user_seconds(pid: int) -> float:
    """User CPU seconds of pid and its live descendants (cpu_seconds is user + system)."""
    return sum(int(st[11]) for st in map(proc_stat, tree(pid)) if st) / CLK_TCK


def perf_counts(err: str) -> dict[str, float]:
    """`perf stat -x,` output, summed into PERF_EVENTS' names."""
    got: dict[str, float] = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit() and f[2] in PERF_EVENTS:
            got[PERF_EVENTS[f[2]]] = got.get(PERF_EVENTS[f[2]], 0) + int(f[0])
    return got


def start_nginx(net: NetnsPair, work: Path, data: Path, port: int, workers: int | None = None,
                seed: bool = False) -> Child:
    """nginx, `worker_processes auto` unless `workers` is given; its config and logs in a directory of its own."""
    own = work / f"nginx-{port}"
    return Child(net.exec(net.srv, *nginx_argv(own, data, f"127.0.0.1:{port} reuseport",
                                                workers=str(workers) if workers else "auto")),
                 log=work / f"nginx-{port}.log")


def start_ramboot(net: NetnsPair, work: Path, data: Path, port: int, workers: int | None = None,
                  seed: bool = False, src: Path | None = None) -> Child:
    """`ramboot serve` (`[serve] workers` left at its default unless `workers` is given); with
    `src`, the code of that source tree (its `src/` first on PYTHONPATH).

    `[scale] seed = false` unless `seed`: with seeding on (the default) the server sends at most
    `seed_fanout` (4) root downloads at once and parks the rest up to 5 s for a peer that wrk
    never becomes, which is not the work nginx is asked to do (docs/benchmarks.md)."""
    cfg = work / f"ramboot-{port}.toml"
    serve = f"[serve]\nworkers = {workers}\n" if workers else ""
    serve += "" if seed else "[scale]\nseed = false\n"
    cfg.write_text(f"""data_dir = "{data}"
[network]
interface = "lo"
address = "127.0.0.1"
[dhcp]
mode = "off"
[tftp]
port = {port - PORT + 16969}
[http]
port = {port}
bind = "127.0.0.1"
https_port = 0
[boot]
default_image = "bench"
{serve}""")
    env = dict(os.environ, PYTHONPATH=str(src / "src")) if src else None
    return Child(net.exec(net.srv, ramboot_exe(), "serve", "--config", str(cfg)), log=work / f"ramboot-{port}.log",
                 env=env)


SERVERS = {"nginx": start_nginx, "ramboot": start_ramboot}


def split_name(name: str) -> tuple[str, int | None, bool]:
    """NAME[:N][+seed]: `nginx` -> (nginx, None, False); `ramboot:2` -> 2 workers;
    `ramboot@TREE:1+seed` -> (ramboot@TREE, 1, seeding on)."""
    rest, plus, _ = name.partition("+seed")
    base, _, n = rest.partition(":")
    return base, int(n) if n else None, bool(plus)


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}{URL_PATH}"


def wait_http(net: NetnsPair, child: Child, port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not child.alive():
            raise RuntimeError(f"server exited: {child.tail(5)}")
        r = run(*net.exec(net.srv, "curl", "-sf", "-o", "/dev/null", "-r", "0-0", url(port)), check=False)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"server not answering after {timeout}s: {child.tail(5)}")


_SIZE = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def _bytes(num: str, unit: str) -> float:
    return float(num) * _SIZE[unit]


def parse_wrk(out: str) -> tuple[int, float, float, str]:
    """(requests, seconds, bytes read, error text) from wrk's summary."""
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s), ([\d.]+)(B|KB|MB|GB|TB) read", out)
    if not m:
        return 0, 0.0, 0.0, f"unparsed wrk output: {out.strip()[-200:]}"
    secs = float(m.group(2)) * (60 if m.group(3) == "m" else 1) if m.group(3) != "ms" else float(m.group(2)) / 1000
    errs = []
    e = re.search(r"Socket errors: (.*)", out)
    if e:
        # timeouts only mean "a 200 MB response took longer than --timeout"; connect/read/write are real
        parts = dict(p.strip().split(" ") for p in e.group(1).split(","))
        bad = {k: v for k, v in parts.items() if k != "timeout" and v != "0"}
        if bad:
            errs.append("socket errors " + ", ".join(f"{k} {v}" for k, v in bad.items()))
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        errs.append(f"{n.group(1)} non-2xx")
    return int(m.group(1)), secs, _bytes(m.group(4), m.group(5)), "; ".join(errs)


def one(net: NetnsPair, srv: Child, name: str, clients: int, duration: int, port: int, perf: bool = False) -> Run:
    r = Run(name, clients)
    threads = 1 if clients < 10 else 2
    cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{duration}s", "--timeout", "300s", url(port)]
    counter = None
    if perf:
        counter = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(PERF_EVENTS), "-p",
                                    ",".join(map(str, tree(srv.pid)))], stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)  # attached before the load starts
    cpu0, user0 = cpu_seconds(srv.pid), user_seconds(srv.pid)
    with RssSampler(srv.pid) as rss:
        out = run(*net.exec(net.srv, *cmd), check=False, timeout=duration + 120)
    r.cpu_s = cpu_seconds(srv.pid) - cpu0
    user = user_seconds(srv.pid) - user0
    counts: dict[str, float] = {}
    if counter is not None:
        counter.send_signal(signal.SIGINT)
        counts = perf_counts(counter.communicate(timeout=30)[1])
    r.rss_mb = rss.peak / 2**20
    req, secs, nbytes, err = parse_wrk(out.stdout + out.stderr)
    r.requests, r.errors = req, err
    if secs:
        r.mb_s = nbytes / 2**20 / secs
        r.gb = nbytes / 2**30
        r.cpu_s_per_gb = r.cpu_s / r.gb if r.gb else 0.0
        r.user_s_per_gb = user / r.gb if r.gb else 0.0
        if perf and r.gb:
            r.per_gb = {k: v / r.gb for k, v in counts.items()}
    if not srv.alive():
        r.errors = (r.errors + "; " if r.errors else "") + "server died"
    return r


def median_run(rs: list[Run]) -> Run:
    """One Run of the medians of MB/s and CPU per GB (and the sums' medians), the peak RSS, every error."""
    m = Run(rs[0].server, rs[0].clients)
    for f in ("mb_s", "gb", "cpu_s", "cpu_s_per_gb", "user_s_per_gb"):
        setattr(m, f, statistics.median(getattr(r, f) for r in rs))
    counted = [r.per_gb for r in rs if r.per_gb]
    if counted:
        m.per_gb = {k: statistics.median(c.get(k, 0.0) for c in counted) for k in counted[0]}
    m.requests = int(statistics.median(r.requests for r in rs))
    m.rss_mb = max(r.rss_mb for r in rs)
    m.errors = "; ".join(sorted({r.errors for r in rs if r.errors}))
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--duration", type=int, default=10, help="seconds of wrk per point")
    ap.add_argument("--clients", default="1,10,100")
    ap.add_argument("--servers", default="nginx,ramboot",
                    help="comma-separated NAME[:N][+seed]: N worker processes (nginx's worker_processes, "
                         "ramboot's [serve] workers), e.g. nginx:1,nginx:2,ramboot:1,ramboot:2; +seed: ramboot "
                         "with `[scale] seed` at its default (on), e.g. ramboot+seed")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per point, interleaved; the median is reported")
    ap.add_argument("--also", type=Path, action="append", default=[], metavar="TREE",
                    help="also a ramboot from this source tree (e.g. a worktree at an older commit), "
                         "reported as ramboot@NAME; repeatable")
    ap.add_argument("--also-as", default="",
                    help="comma-separated suffixes each --also tree runs with, as in --servers (e.g. ':1,:2,+seed'); "
                         "default: the tree's defaults, seeding off")
    ap.add_argument("--perf", action="store_true",
                    help="also count each server's sendfile calls, epoll waits and softirqs per GB (perf stat)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep logs here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("http_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("wrk", "curl") + (("perf",) if a.perf else ()):
        if not have(tool):
            print(f"http_bench: {tool} not installed (make setup adds it)", file=sys.stderr)
            return 2
    clients = [int(c) for c in a.clients.split(",")]
    a.also = {t.resolve().name: t.resolve() for t in a.also}
    a.also_as = a.also_as.split(",")
    work = Path(tempfile.mkdtemp(prefix="rbb-http-"))
    data = work / "data"
    runs: list[Run] = []
    load0 = os.getloadavg()[0]
    try:
        make_image(data, "bench", a.size_mb << 20)
        names = ([n for n in a.servers.split(",") if not n.startswith("nginx") or have("nginx")]
                 + [f"ramboot@{t}{suffix}" for t in a.also for suffix in a.also_as])
        if not have("nginx") and any(n.startswith("nginx") for n in a.servers.split(",")):
            runs.append(Run("nginx", 0, errors="nginx not installed"))
        # Both servers run at once on their own ports and are measured in turn at
        # each client count, so a neighbour's load drifting affects both alike.
        with NetnsPair() as net:
            servers: dict[str, Child] = {}
            try:
                for i, name in enumerate(names):
                    port = PORT + i
                    base, workers, seed = split_name(name)
                    if base.startswith("ramboot@"):
                        servers[name] = start_ramboot(net, work, data, port, workers, seed,
                                                      a.also[base.partition("@")[2]])
                    else:
                        servers[name] = SERVERS[base](net, work, data, port, workers, seed)
                    wait_http(net, servers[name], port)
                    # warm the page cache
                    run(*net.exec(net.srv, "curl", "-s", "-o", "/dev/null", url(port)), check=False)
                for c in clients:
                    for _ in range(a.rounds):
                        for i, name in enumerate(names):
                            r = one(net, servers[name], name, c, a.duration, PORT + i, a.perf)
                            print(f"  {name:8s} c={c:<4d} {r.mb_s:9.1f} MB/s  {r.cpu_s_per_gb:6.3f} CPU s/GB"
                                  f" (user {r.user_s_per_gb:.3f})  RSS {r.rss_mb:6.1f} MB"
                                  + (" " + _per_gb(r) if r.per_gb else "")
                                  + (f"  {r.errors}" if r.errors else ""), flush=True)
                            runs.append(r)
            except RuntimeError as e:
                runs.append(Run("?", 0, errors=str(e)))
                print(f"  {e}", flush=True)
            finally:
                for srv in servers.values():
                    srv.stop()
                if a.keep:
                    a.keep.mkdir(parents=True, exist_ok=True)
                    for f in work.glob("*.log"):
                        shutil.copy(f, a.keep / f.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # with several rounds, each server's median round per client count (figures drift with the
    # neighbours' load; the best of a few would flatter whoever was lucky), its peak RSS
    rounds: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        rounds.setdefault((r.server, r.clients), []).append(r)
    runs = [median_run(rs) for rs in rounds.values()]
    peer = {r.clients: r for r in runs if r.server == "nginx"}
    if not peer:  # only nginx:N given: the first of them is the peer
        first = next((r.server for r in runs if r.server.startswith("nginx")), None)
        peer = {r.clients: r for r in runs if r.server == first}
    rows = []
    for r in runs:
        p = peer.get(r.clients) if not r.server.startswith("nginx") else None
        rows.append([r.server, r.clients or "-", f"{r.mb_s:,.0f}", f"{r.cpu_s_per_gb:.3f}", f"{r.user_s_per_gb:.3f}",
                     f"{r.rss_mb:.1f}", ratio(r.mb_s, p.mb_s) if p else "",
                     ratio(r.cpu_s_per_gb, p.cpu_s_per_gb) if p else "", _per_gb(r), r.errors])
    print(table(["server", "clients", "MB/s", "CPU s/GB", "user s/GB", "peak RSS MB", "MB/s vs nginx",
                 "CPU/GB vs nginx", "per GB (--perf)", "errors"],
                rows,
                title=f"HTTP: {a.size_mb} MB file over loopback, wrk --timeout 300s -d {a.duration}s, "
                      f"median of {a.rounds} rounds, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}"))
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 0


def _per_gb(r: Run) -> str:
    return " ".join(f"{k} {v:,.0f}" for k, v in sorted(r.per_gb.items())) if r.per_gb else ""


if __name__ == "__main__":
    sys.exit(main())
