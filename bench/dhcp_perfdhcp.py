#!/usr/bin/env python3
"""DHCP side by side: Kea and ramboot at fixed rates, alternating, several rounds.

    .venv/bin/python bench/dhcp_perfdhcp.py [--rates 2000,3000,4000,5000] [--rounds 3] [--servers kea,ramboot]
    .venv/bin/python bench/dhcp_perfdhcp.py --servers kea-pg,ramboot-pg   # both on PostgreSQL

The servers and the measurement are `bench/dhcp_bench.py`'s (BASELINES.md's
set-up: a fresh veth pair of namespaces and a fresh server with an empty lease
database per point, `perfdhcp -4 -l IF -r RATE -R 1000000 -p 10`); this
driver only orders the points so that each rate is measured for every server
in turn, `--rounds` times, and prints the load average beside each point.
Other jobs on a shared 2-core machine move the figures by tens of percent, so
a rate counts as sustained when the median round is under 1 % drops in both
exchanges.

Namespaces are named `rbp<random>-s` / `-c`; each is deleted after its point.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's ramboot, and the bench package

from bench import dhcp_bench  # noqa: E402


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="2000,3000,4000,5000,6000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="kea,ramboot")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("dhcp_perfdhcp: needs root (network namespaces)", file=sys.stderr)
        return 2
    servers = a.servers.split(",")
    rates = [int(r) for r in a.rates.split(",")]
    points: dict[tuple[str, int], list[tuple[dhcp_bench.Point, str]]] = {}
    print(f"dhcp side by side: {os.cpu_count()} cores, load {load()} at start", flush=True)
    for rate in rates:
        for rnd in range(a.rounds):
            order = servers if rnd % 2 == 0 else servers[::-1]  # alternate who goes first
            for server in order:
                before = load()
                pt = dhcp_bench.measure(server, rate, a.duration, None,
                                        net_tag="rbp" + secrets.token_hex(3))  # our own namespace names
                points.setdefault((server, rate), []).append((pt, before))
                print(f"  round {rnd + 1}  load {before:>5}  " + dhcp_bench._line(server, pt)[2:], flush=True)
    print()
    print(f"{'server':8s} {'rate':>6s}  {'median drops D-O / R-A':>24s}  {'median delay ms':>16s}"
          f"  {'CPU ms/DORA':>11s}  ok rounds")
    best: dict[str, int] = {}
    for (server, rate), pts in points.items():
        do = statistics.median(p.drops_do for p, _ in pts)
        ra = statistics.median(p.drops_ra for p, _ in pts)
        dl = statistics.median(p.delay_ra_ms for p, _ in pts)
        cpu = statistics.median(1000 * p.server_cpu_s / max(1.0, p.achieved * a.duration) for p, _ in pts)
        ok = sum(p.ok for p, _ in pts)
        print(f"{server:8s} {rate:6d}  {do:10.3f}% / {ra:8.3f}%  {dl:16.2f}  {cpu:11.3f}  {ok}/{len(pts)}")
        if do < 1 and ra < 1:
            best[server] = max(best.get(server, 0), rate)
    print()
    for server in servers:
        print(f"{server}: highest rate with median drops under 1 % in both exchanges: {best.get(server, 0):,} DORA/s")
    for ours, theirs in (("ramboot", "kea"), ("ramboot-pg", "kea-pg"), ("ramboot-pure", "kea")):
        if ours in best and theirs in best:
            print(f"{ours} / {theirs}: {best[ours] / best[theirs]:.2f}")
    # CPU per DORA and reply delay against the first server (Kea), rate by rate, from the medians
    base = servers[0]
    for server in servers[1:]:
        for rate in rates:
            ours_pts, base_pts = points.get((server, rate)), points.get((base, rate))
            if not ours_pts or not base_pts:
                continue
            cpus = [statistics.median(p.server_cpu_s / max(1.0, p.achieved) for p, _ in pts)
                    for pts in (ours_pts, base_pts)]
            delays = [statistics.median(p.delay_ra_ms for p, _ in pts) for pts in (ours_pts, base_pts)]
            print(f"{server} / {base} at {rate}/s: CPU per DORA {cpus[0] / max(cpus[1], 1e-9):.2f}x, "
                  f"REQUEST-ACK delay {delays[0] / max(delays[1], 1e-9):.1f}x")
    print(f"load {load()} at the end")
    if a.json:
        a.json.write_text(json.dumps({f"{s}@{r}": [dict(asdict(p), load_before=ld) for p, ld in v]
                                      for (s, r), v in points.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
