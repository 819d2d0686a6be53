#!/usr/bin/env python3
"""Boot storm scale curve: completion p50/p99 and server CPU against N clients, as a plot.

    .venv/bin/python bench/storm_curve.py [--clients 50,200,500,1000] [--image-mb 8] [--png docs/storm-curve.png]

Runs `ramboot bench storm -n N --image-mb S` (src/ramboot/bench/storm.py: a
fresh namespace pair and server per point, N simulated BIOS PXE -> iPXE
clients, every byte checked) for each N in turn, prints one table row per
point with the load average before it, writes every summary to `--json`,
and draws completion p50/p99 (left axis) and the server's CPU share of one
core (right axis) against N into `--png` (matplotlib; the test extras have it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_point(n: int, image_mb: int, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        cmd = [sys.executable, "-m", "ramboot.bench", "storm", "-n", str(n), "--image-mb", str(image_mb),
               "--json", str(out), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        sys.stderr.write(r.stdout[-2000:])
        if r.returncode != 0 and not out.stat().st_size:
            return {"clients": n, "image_mb": image_mb, "error": (r.stderr or r.stdout)[-500:]}
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def plot(points: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if "p50_s" in p]
    xs = [p["clients"] for p in ok]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, [p["p50_s"] for p in ok], "o-", label="completion p50")
    ax.plot(xs, [p["p99_s"] for p in ok], "s-", label="completion p99")
    ax.set_xlabel("simulated PXE clients powered on at once (N)")
    ax.set_ylabel("seconds from power-on to booted")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(xs, [p["server_cpu_pct"] for p in ok], "^--", color="tab:gray", label="server CPU (% of one core)")
    ax2.set_ylabel("server CPU, % of one core")
    ax2.set_ylim(0, max(100, *(p["server_cpu_pct"] for p in ok)) * 1.1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="50,200,500,1000")
    ap.add_argument("--image-mb", type=int, default=8)
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "storm-curve.png")
    ap.add_argument("--json", type=Path)
    a, extra = ap.parse_known_args()
    if os.geteuid() != 0:
        print("storm_curve: needs root (network namespaces)", file=sys.stderr)
        return 2
    points = []
    print(f"{'N':>6} {'load':>6} {'booted':>11} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'MB/s':>7} {'srv CPU %':>9}")
    for n in (int(x) for x in a.clients.split(",")):
        load = os.getloadavg()[0]
        p = run_point(n, a.image_mb, extra)
        p["load_before"] = load
        points.append(p)
        if "p50_s" in p:
            print(f"{n:6d} {load:6.2f} {p['ok']:5d}/{n:<5d} {p['p50_s']:7.2f} {p['p99_s']:7.2f} {p['max_s']:7.2f}"
                  f" {p['aggregate_mb_s']:7.0f} {p['server_cpu_pct']:9.0f}", flush=True)
        else:
            print(f"{n:6d} {load:6.2f} ERROR {p.get('error', '')[:200]}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(points, indent=1))
    loads = ", ".join(f"{p['load_before']:.1f}" for p in points)
    plot(points, a.png, f"ramboot boot storm, {a.image_mb} MB image, 2 cores (load before each point: {loads})")
    print(f"plot: {a.png}")
    return 0 if all(p.get("failed", 1) == 0 for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
