#!/usr/bin/env python3
"""Soak: mixed load against one `ramboot serve` for a long time; memory, fds and tasks must stay flat.

    .venv/bin/python bench/soak.py [--minutes 30] [--interval 5] [--out docs]     (`make soak`, SOAK_MINUTES)

Set-up: two namespaces joined by a veth (`rbb<random>-s` / `-c`, as `python -m
bench.storm`), one `ramboot serve` in full DHCP mode with an API token, and in the
client namespace, all at once for the whole load phase:

- storm loops: `--clients` simulated PXE clients (DHCP, TFTP, iPXE DHCP, HTTP
  script, kernel, initrd, root image checked by sha256, `booted` report) boot
  together, again and again with the same MACs (their leases are reused);
- API writes: PUT, GET and DELETE of nodes from a pool of 50 MACs with
  `Authorization: Bearer <token>`, `--api-rate` a second;
- SSE clients: `--sse` readers of `/api/v1/events/stream`, one of them hung up
  and replaced every 10 s.

Every `--interval` seconds the server's RSS (/proc/PID/status VmRSS), its open
file descriptors (/proc/PID/fd) and its asyncio task count
(`ramboot_asyncio_tasks` from /metrics) are sampled, with where the memory goes
(`ramboot_python_allocated_blocks`, `ramboot_sqlite_memory_bytes`), from an idle minute
before the load, through the load, to an idle minute after it.

"Flat", the verdict (exit 1 when any fails):
- no boot, API call or SSE connection failed, and the server stayed up;
- RSS: over the load phase after its warm-up (the first 20 %), the least-squares
  line rises by less than max(5 % of the median, 8 MiB) from start to end;
- fds and tasks: the median of the load's last fifth is at most the median of
  the first fifth after warm-up + 5 (no climb), and once idle again they are
  back to the idle level before the load + 2 (nothing left behind), the
  database's files aside: those are the connection pool's, at most a file and
  its WAL per pooled connection (15).

Writes SOAK.csv (every sample) and SOAK.png (the three curves) into `--out`.
matplotlib is needed for the plot; it is installed into the running venv if missing.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, TypedDict

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent)]  # this tree's ramboot, and the bench package

DB_POOL = 15  # SQLAlchemy QueuePool: pool_size 5 + max_overflow 10 (the store's defaults)
API_MACS = [f"02:50:4b:00:00:{i:02x}" for i in range(50)]


# -- the load workers (run inside the client namespace) ------------------------------


class ApiCounts(TypedDict):
    """What the API worker writes to its stats file."""

    puts: int
    gets: int
    deletes: int
    errors: int
    last_error: str


class SseCounts(TypedDict):
    """What the SSE worker writes to its stats file."""

    connects: int
    events: int
    errors: int
    last_error: str


async def api_worker(base: str, token: str, rate: float, stats: Path, stop: Path) -> None:
    import aiohttp

    c: ApiCounts = {"puts": 0, "gets": 0, "deletes": 0, "errors": 0, "last_error": ""}
    hdr = {"Authorization": f"Bearer {token}"}
    i = 0
    last = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        while not stop.exists():
            mac = API_MACS[i % len(API_MACS)]
            i += 1
            try:
                body = {"image": "bench", "hostname": f"soak-{i % 50}", "labels": {"round": str(i)}}
                async with s.put(f"{base}/api/v1/nodes/{mac}", json=body, headers=hdr) as r:
                    ok = r.status in (200, 201)
                    c["puts"] += 1
                async with s.get(f"{base}/api/v1/nodes/{mac}", headers=hdr) as r2:
                    ok = ok and r2.status == 200
                    c["gets"] += 1
                if i % 2 == 0:
                    async with s.delete(f"{base}/api/v1/nodes/{mac}", headers=hdr) as r3:
                        ok = ok and r3.status == 204
                        c["deletes"] += 1
                if not ok:
                    c["errors"] += 1
                    c["last_error"] = f"status {r.status}/{r2.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                c["errors"] += 1
                c["last_error"] = f"{type(e).__name__}: {e}"[:200]
            await asyncio.sleep(1 / rate)
            if time.monotonic() - last > 1:
                last = time.monotonic()
                stats.write_text(json.dumps(c))
    stats.write_text(json.dumps(c))


async def sse_worker(base: str, token: str, n: int, stats: Path, stop: Path) -> None:
    import aiohttp

    c: SseCounts = {"connects": 0, "events": 0, "errors": 0, "last_error": ""}

    async def reader(slot: int, session: aiohttp.ClientSession) -> None:
        while not stop.exists():
            try:
                async with session.get(f"{base}/api/v1/events/stream?access_token={token}") as r:
                    if r.status != 200:
                        c["errors"] += 1
                        c["last_error"] = f"status {r.status}"
                        await asyncio.sleep(1)
                        continue
                    c["connects"] += 1
                    # slot 0 hangs up every 10 s (a browser tab closed); the others stay
                    end = time.monotonic() + (10 if slot == 0 else 1e9)
                    while time.monotonic() < end and not stop.exists():
                        try:
                            line = await asyncio.wait_for(r.content.readline(), 1.0)
                        except TimeoutError:
                            continue
                        if not line:
                            break
                        if line.startswith(b"event: node"):
                            c["events"] += 1
            except (aiohttp.ClientError, OSError) as e:
                c["errors"] += 1
                c["last_error"] = f"{type(e).__name__}: {e}"[:200]
                await asyncio.sleep(1)

    async def report() -> None:
        while not stop.exists():
            stats.write_text(json.dumps(c))
            await asyncio.sleep(1)

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        await asyncio.gather(report(), *(reader(i, s) for i in range(n)))
    stats.write_text(json.dumps(c))


# -- the orchestrator -------------------------------------------------------------


def metrics_of(ns: str, url: str, token: str) -> dict[str, float]:
    from ramboot.lab.netns import call_in_netns

    def get() -> str:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}),
                                    timeout=10) as r:
            body: bytes = r.read()
            return body.decode()

    out: dict[str, float] = {}
    for line in call_in_netns(ns, get).splitlines():
        if line and not line.startswith("#") and " " in line:
            k, v = line.rsplit(" ", 1)
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def proc_rss_fds(pid: int) -> tuple[float, int]:
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """What the server's fds point at, by kind (socket, pipe, anon_inode:..., or the file's suffix)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        k = t.split(":[")[0] if ":[" in t else ("file " + Path(t).name.rsplit(".", 1)[-1][:12])
        kinds[k] = kinds.get(k, 0) + 1
    return dict(sorted(kinds.items()))


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def verdict(rows: list[dict[str, Any]], failures: dict[str, int]) -> tuple[bool, list[str]]:
    """The flatness criterion of the module notes; returns (ok, one line per check)."""
    load = [r for r in rows if r["phase"] == "load"]
    head = [r for r in rows if r["phase"] == "idle-before"]
    tail = [r for r in rows if r["phase"] == "idle-after"]
    lines, ok = [], True
    if len(load) < 10 or not head or not tail:
        return False, [f"too few samples: {len(head)} idle before, {len(load)} under load, {len(tail)} idle after"]
    body = load[len(load) // 5:]
    fifth = max(1, len(body) // 5)
    first, last = body[:fifth], body[-fifth:]
    xs = [r["t_s"] for r in body]
    rss = [r["rss_mib"] for r in body]
    rise = _slope(xs, rss) * (xs[-1] - xs[0])
    allowed = max(0.05 * statistics.median(rss), 8.0)
    good = rise < allowed
    ok &= good
    lines.append(f"RSS: {statistics.median(rss):.1f} MiB median under load, the fit rises {rise:+.1f} MiB over "
                 f"{(xs[-1] - xs[0]) / 60:.1f} min (allowed < {allowed:.1f}); peak {max(rss):.1f} MiB "
                 f"-> {'flat' if good else 'GROWING'}")
    for key, unit in (("sqlite_mib", "MiB"), ("py_kblocks", "thousand blocks")):
        vals = [r[key] for r in body]
        if min(vals) >= 0:
            lines.append(f"  where it goes (not judged): {key} {statistics.median(vals):.1f} {unit} median, the fit "
                         f"{_slope(xs, vals) * (xs[-1] - xs[0]):+.1f} over the same span")
    for key in ("fds", "tasks"):
        a, b = statistics.median(r[key] for r in first), statistics.median(r[key] for r in last)
        # Idle again, the database's files are the connection pool's (SQLAlchemy's QueuePool keeps
        # up to DB_POOL connections, a file and its WAL each): bounded, not left behind.
        def own(r: dict[str, Any], key: str = key) -> float:
            n: float = r[key] - r["db_fds"] if key == "fds" else r[key]
            return n

        idle0, idle1 = statistics.median(own(r) for r in head), own(tail[-1])
        good = b <= a + 5 and idle1 <= idle0 + 2
        extra = ""
        if key == "fds":
            db = tail[-1]["db_fds"]
            good &= db <= 2 * DB_POOL + 1
            extra = f", database files {db} (the pool's bound {2 * DB_POOL + 1})"
        ok &= good
        lines.append(f"{key}: median {a:.0f} early in the load, {b:.0f} at its end (allowed <= {a + 5:.0f}); "
                     f"idle {idle0:.0f} before, {idle1:.0f} after{' besides the database' if key == 'fds' else ''}"
                     f" (allowed <= {idle0 + 2:.0f}){extra}; peak {max(r[key] for r in load):.0f}"
                     f" -> {'flat' if good else 'LEAKING'}")
    bad = {k: v for k, v in failures.items() if v}
    ok &= not bad
    lines.append("failures: none" if not bad else f"failures: {bad}")
    return ok, lines


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9.5), sharex=True)
    for ax, key, label in zip(axes, ("rss_mib", "py_kblocks", "fds", "tasks"),
                              ("RSS (MiB)", "Python blocks (k)", "open fds", "asyncio tasks"), strict=True):
        ax.plot(t, [r.get(key, 0) for r in rows], lw=1.2, label="RSS" if key == "rss_mib" else None)
        if key == "rss_mib" and any(r.get("sqlite_mib", -1) >= 0 for r in rows):
            ax.plot(t, [r["sqlite_mib"] for r in rows], lw=1.0, color="tab:green", label="SQLite's own memory")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        load = [r["t_s"] / 60 for r in rows if r["phase"] == "load"]
        if load:
            ax.axvspan(load[0], load[-1], color="tab:orange", alpha=0.08, lw=0)
    axes[-1].set_xlabel("minutes (shaded: under load)")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def orchestrate(a: argparse.Namespace) -> int:
    from bench.storm.common import POOL_NET
    from bench.storm.orchestrator import client_params, prepare_data, run_generators, server_config
    from bench.util import Child, NetnsPair, ramboot_exe, run

    if os.geteuid() != 0:
        print("soak: needs root (network namespaces)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rbb-soak-"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    token = secrets.token_hex(16)
    man = prepare_data(data, a.image_mb)
    rows: list[dict[str, Any]] = []
    failures = {"boots": 0, "api": 0, "sse": 0, "server_died": 0}
    counts = {"storms": 0, "boots_ok": 0}
    try:
        with NetnsPair() as net:
            run("ip", "-n", net.cli, "route", "add", "local", POOL_NET, "dev", "lo")
            cfg = work / "ramboot.toml"
            cfg.write_text(server_config(data, net.srv_if) + f"[api]\ntoken = \"{token}\"\n")
            srv = Child(net.exec(net.srv, ramboot_exe(), "serve", "--config", str(cfg)), log=work / "server.log")
            workers: list[Child] = []
            stop = work / "stop"
            try:
                end = time.monotonic() + 30
                while "serving on" not in (work / "server.log").read_text(errors="replace"):
                    if not srv.alive() or time.monotonic() > end:
                        print(f"soak: the server did not start:\n{srv.tail(10)}", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
                base_url = f"http://{net.srv_ip}"
                print(f"soak: server pid {srv.pid} in {net.srv}; {a.minutes} min of load, "
                      f"sample every {a.interval} s; work dir {work}", flush=True)
                t0 = time.monotonic()
                phase = "idle-before"

                def sample() -> None:
                    stats = {}
                    for f in ("api", "sse"):
                        try:
                            stats[f] = json.loads((work / f"{f}.json").read_text())
                        except (OSError, ValueError):
                            stats[f] = {}
                    try:
                        rss, fds = proc_rss_fds(srv.pid)
                        db_fds = sum(v for k, v in fd_kinds(srv.pid).items() if k.startswith("file db"))
                        m = metrics_of(net.srv, f"{base_url}/metrics", token)
                    except (OSError, ValueError) as e:
                        print(f"soak: sample failed: {e}", flush=True)
                        return
                    row = {
                        "t_s": round(time.monotonic() - t0, 1), "phase": phase, "rss_mib": round(rss, 2),
                        "fds": fds, "db_fds": db_fds, "tasks": int(m.get("ramboot_asyncio_tasks", -1)),
                        "py_kblocks": round(m.get("ramboot_python_allocated_blocks", -1000) / 1000, 1),
                        "sqlite_mib": round(m.get("ramboot_sqlite_memory_bytes", -1) / 2**20, 2),
                        "sse_clients": int(m.get("ramboot_sse_clients", -1)),
                        "storms": counts["storms"], "boots_ok": counts["boots_ok"], "boots_failed": failures["boots"],
                        "api_puts": stats["api"].get("puts", 0), "api_errors": stats["api"].get("errors", 0),
                        "sse_connects": stats["sse"].get("connects", 0), "sse_events": stats["sse"].get("events", 0),
                    }
                    rows.append(row)
                    print("soak: " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

                def idle(seconds: float) -> None:
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        sample()
                        time.sleep(a.interval)
                    print(f"soak: {phase}: the server's fds: {fd_kinds(srv.pid)}", flush=True)

                idle(a.idle)
                phase = "load"
                me = [sys.executable, str(Path(__file__).resolve())]
                workers.append(Child(net.exec(net.cli, *me, "--role", "api", "--server", base_url, "--token", token,
                                              "--api-rate", str(a.api_rate), "--stats", str(work / "api.json"),
                                              "--stop", str(stop)), log=work / "api.log"))
                workers.append(Child(net.exec(net.cli, *me, "--role", "sse", "--server", base_url, "--token", token,
                                              "--sse", str(a.sse), "--stats", str(work / "sse.json"),
                                              "--stop", str(stop)),
                                     log=work / "sse.log"))
                params = client_params(a.clients, net.cli_if, net.srv_ip, data, man, timeout=120,
                                       mac_prefix="02" + secrets.token_hex(2))
                storm_error: list[str] = []

                def storms() -> None:
                    while not stop.exists():
                        try:
                            outs = run_generators(net, work, params, 1, "storm", time.time() + 0.3, timeout=120)
                        except Exception as e:  # a generator that died is a failure, not a crash of the soak
                            failures["boots"] += a.clients
                            storm_error.append(str(e)[:300])
                            time.sleep(5)
                            continue
                        res = [r for o in outs for r in o["results"]]
                        counts["storms"] += 1
                        counts["boots_ok"] += sum(r["ok"] for r in res)
                        bad = [r for r in res if not r["ok"]]
                        failures["boots"] += len(bad)
                        if bad:
                            storm_error.append(bad[0]["error"])
                        time.sleep(a.pause)

                th = threading.Thread(target=storms, daemon=True)
                th.start()
                load_start = time.monotonic()
                load_end = load_start + a.minutes * 60
                dumped = False
                while time.monotonic() < load_end:
                    if a.memory_dumps and not dumped and time.monotonic() - load_start > 60:
                        os.kill(srv.pid, signal.SIGUSR2)  # the server logs its objects by type
                        dumped = True
                    sample()
                    if not srv.alive():
                        failures["server_died"] = 1
                        break
                    time.sleep(a.interval)
                if a.memory_dumps:
                    os.kill(srv.pid, signal.SIGUSR2)
                    time.sleep(3)
                    for line in (work / "server.log").read_text(errors="replace").splitlines():
                        if "memory:" in line:
                            print("soak: server " + line, flush=True)
                stop.touch()
                th.join(300)
                for w in workers:
                    w.proc.wait(30) if w.alive() else None
                    w.stop()
                for f in ("api", "sse"):
                    try:
                        failures[f] = json.loads((work / f"{f}.json").read_text()).get("errors", 0)
                    except (OSError, ValueError):
                        failures[f] = 1
                phase = "idle-after"
                idle(a.idle)
                if not srv.alive():
                    failures["server_died"] = 1
                if storm_error:
                    print(f"soak: first storm failure: {storm_error[0]}", flush=True)
            finally:
                stop.touch()
                for w in workers:
                    w.stop()
                srv.stop()
                shutil.copy(work / "server.log", out / f"{a.name}-server.log") if a.keep_log else None
        csv_path, png_path = out / f"{a.name}.csv", out / f"{a.name}.png"
        with open(csv_path, "w", newline="") as out_csv:
            writer = csv.DictWriter(out_csv, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        ok, lines = verdict(rows, failures)
        last = rows[-1]
        title = (f"ramboot serve soak: {a.minutes} min of storms ({a.clients} clients a round, {last['storms']} "
                 f"rounds, {last['boots_ok']} boots), API writes, {a.sse} SSE clients")
        plot(rows, png_path, title)
        print(f"soak: {last['storms']} storm rounds, {last['boots_ok']} boots ok, {failures['boots']} failed; "
              f"{last['api_puts']} API PUTs; {last['sse_connects']} SSE connects, {last['sse_events']} events")
        for line in lines:
            print("soak: " + line)
        print(f"soak: wrote {csv_path} and {png_path}")
        print("soak: " + ("PASS: flat" if ok else "FAIL"))
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds sampled idle before and after the load")
    ap.add_argument("--clients", type=int, default=40, help="clients per storm round")
    ap.add_argument("--pause", type=float, default=3.0, help="seconds between storm rounds")
    ap.add_argument("--image-mb", type=float, default=2.0)
    ap.add_argument("--api-rate", type=float, default=10.0, help="API rounds (PUT, GET, every other DELETE) a second")
    ap.add_argument("--sse", type=int, default=8, help="SSE clients")
    ap.add_argument("--out", default=str(HERE.parent / "docs"))
    ap.add_argument("--name", default="soak")
    ap.add_argument("--keep-log", action="store_true")
    ap.add_argument("--memory-dumps", action="store_true",
                    help="SIGUSR2 the server a minute into the load and at its end (objects by type in its log;"
                         " with PYTHONTRACEMALLOC=1 in the environment, the biggest allocation sites too)")
    # the workers' side
    ap.add_argument("--role", choices=["api", "sse"], help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role == "api":
        asyncio.run(api_worker(a.server, a.token, a.api_rate, a.stats, a.stop))
        return 0
    if a.role == "sse":
        asyncio.run(sse_worker(a.server, a.token, a.sse, a.stats, a.stop))
        return 0
    # SIGTERM (a CI job or an operator stopping the soak) unwinds like Ctrl-C: the
    # server, the workers and the namespaces are removed by the finally blocks.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
