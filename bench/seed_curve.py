#!/usr/bin/env python3
"""Seeding curve: N simulated nodes behind a rate-limited server link, seeding off and on.

    .venv/bin/python bench/seed_curve.py [--clients 100,300,1000] [--image-mb 64] [--link-mbit 1000]
                                         [--fanout 4] [--png docs/seed-curve.png] [--json FILE]

Each point is `python -m bench.storm -n N --image-mb S --link-mbit L [--seeding]`
(bench/storm/: a fresh namespace pair and server, the server's veth
limited with tc tbf, every byte compared with the manifest-checked files; with
--seeding the simulated nodes follow the server's redirect to a peer, fall back,
report, and then seed as booted nodes do). Per point: completion p50 and p99, the
bytes the server's interface sent, and beside them the bounds for the root images:

- seeding off: N x root / link rate (every root through the server's link);
- seeding on: root / link rate x fanout x log_fanout(N) (a tree: the server feeds
  `fanout` nodes at a time at link/fanout each, every generation multiplies the
  seeders by fanout; peers' links are not the bound here, they share one host).

The kernel and initrd (1/16 and 1/8 of the root in the synthetic image) always come
from the server, so with seeding the server's bytes cannot fall below N x (kernel +
initrd). Draws completion against N for both, and the server's bytes, into --png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's ramboot, and the bench package

from bench.storm_curve import run_point  # noqa: E402


def bounds(n: int, image_mb: float, link_mbit: float, fanout: int) -> tuple[float, float]:
    per = image_mb * 2**20 * 8 / (link_mbit * 1e6)  # one root over the whole link, seconds
    return n * per, per * fanout * max(1.0, math.log(max(n, 2), fanout))


def plot(rows: list[dict[str, Any]], png: Path, image_mb: float, link_mbit: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    for seed, colour in ((False, "tab:red"), (True, "tab:blue")):
        pts = [r for r in rows if r.get("seed") == seed and "p50_s" in r]
        ns = [r["clients"] for r in pts]
        label = "seeding on" if seed else "seeding off"
        ax.plot(ns, [r["p99_s"] for r in pts], "o-", color=colour, label=f"{label}: p99")
        ax.plot(ns, [r["p50_s"] for r in pts], "o--", color=colour, alpha=0.6, label=f"{label}: p50")
        ax.plot(ns, [r["bound_s"] for r in pts], ":", color=colour, label=f"{label}: bound")
        bx.plot(ns, [r["server_tx_bytes"] / 2**30 for r in pts], "o-", color=colour, label=label)
    ax.set(xscale="log", yscale="log", xlabel="nodes booting at once", ylabel="completion (s)",
           title=f"{image_mb:g} MB root, server link {link_mbit:g} Mbit/s (tc tbf)")
    bx.set(xscale="log", yscale="log", xlabel="nodes", ylabel="bytes the server sent (GiB)",
           title="server's interface counter")
    for a in (ax, bx):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="100,300,1000")
    ap.add_argument("--image-mb", type=float, default=64)
    ap.add_argument("--link-mbit", type=float, default=1000)
    ap.add_argument("--fanout", type=int, default=4, help="the server's [scale] seed_fanout (its default)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "seed-curve.png")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    print(f"{'N':>6} {'seeding':>7} {'ok':>6} {'p50 s':>8} {'p99 s':>8} {'bound s':>8} {'server GiB':>10}")
    for n in (int(x) for x in a.clients.split(",")):
        off_bound, on_bound = bounds(n, a.image_mb, a.link_mbit, a.fanout)
        for seed in (False, True):
            extra = ["--link-mbit", f"{a.link_mbit:g}", "--timeout", "1800"] + (["--seeding"] if seed else [])
            p = run_point(n, a.image_mb, extra)
            p.update(seed=seed, bound_s=on_bound if seed else off_bound)
            rows.append(p)
            if "p50_s" not in p:
                print(f"{n:>6} {'on' if seed else 'off':>7}  error: {p.get('error', '')[-200:]}")
                continue
            print(f"{n:>6} {'on' if seed else 'off':>7} {p['ok']:>3}/{n:<3} {p['p50_s']:8.1f} {p['p99_s']:8.1f} "
                  f"{p['bound_s']:8.1f} {p['server_tx_bytes'] / 2**30:10.2f}", flush=True)
    for n in sorted({r["clients"] for r in rows}):
        off = next((r for r in rows if r["clients"] == n and not r["seed"] and "p99_s" in r), None)
        on = next((r for r in rows if r["clients"] == n and r["seed"] and "p99_s" in r), None)
        if off and on:
            print(f"N={n}: p99 {off['p99_s'] / max(on['p99_s'], 1e-9):.1f}x shorter with seeding; the server sent "
                  f"{100 * on['server_tx_bytes'] / max(off['server_tx_bytes'], 1):.0f}% of the bytes")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    plot(rows, a.png, a.image_mb, a.link_mbit)
    print(f"plot: {a.png}")
    return 0 if all(r.get("failed", 1) == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
