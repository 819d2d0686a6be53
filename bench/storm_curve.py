#!/usr/bin/env python3
"""Boot storm scale curve: completion p50/p99 and server CPU against N clients, as a plot.

    .venv/bin/python bench/storm_curve.py [--clients 100,300,1000,3000] [--image-mb 8]
                                          [--large 200x256] [--png docs/storm-curve.png]

Runs `python -m bench.storm -n N --image-mb S` (bench/storm/: a
fresh namespace pair and server per point, N simulated BIOS PXE -> iPXE
clients, every byte compared with the manifest-checked files) for each N in
turn, then the `--large` point (N clients x an S MB image, its own row), prints
one table row per point with the load average before it, the CPU of each side
and which side bound it, writes every summary to `--json`, and draws
completion p50/p99 (left axis) and the CPU of the server and of the generator,
in % of one core (right axis), against N into `--png` (matplotlib; the test
extras have it), the large point as bars in a second panel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_point(n: int, image_mb: float, extra: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        cmd = [sys.executable, "-m", "bench.storm", "-n", str(n), "--image-mb", f"{image_mb:g}",
               "--json", str(out), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
        sys.stderr.write(r.stdout[-2500:])
        if r.returncode != 0 and not out.stat().st_size:
            return {"clients": n, "image_mb": image_mb, "error": (r.stderr or r.stdout)[-500:]}
        point: dict[str, Any] = json.loads(out.read_text())
        return point
    finally:
        out.unlink(missing_ok=True)


def _label(p: dict[str, Any], head: str) -> str:
    return f"{head}\n{p['bound'].split(' ')[0]}-bound\nload {p['load_before']:.1f}"


def plot(curve: list[dict[str, Any]], large: list[dict[str, Any]], png: Path, image_mb: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [p for p in curve if "p50_s" in p]
    large = [p for p in large if "p50_s" in p]
    fig, axes = plt.subplots(1, 2 if large else 1, figsize=(11 if large else 7, 4.6), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1.2]} if large else None)
    ax = axes[0][0]
    xs = [p["clients"] for p in curve]
    ax.plot(xs, [p["p50_s"] for p in curve], "o-", label="completion p50")
    ax.plot(xs, [p["p99_s"] for p in curve], "s-", label="completion p99")
    ax.set_ylabel("seconds from power-on to booted")
    ax.set_ylim(0, max(p["p99_s"] for p in curve) * 1.15)
    ax.set_xscale("log")
    ax.set_xticks(xs, [_label(p, f"{p['clients']:,}") for p in curve], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("simulated PXE clients powered on at once (N)")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(xs, [p["server_cpu_pct"] for p in curve], "^--", color="tab:red", label="server CPU")
    ax2.plot(xs, [p["generator_cpu_pct"] for p in curve], "v:", color="tab:gray",
             label="generator CPU (all its processes)")
    ax2.set_ylabel("CPU, % of one core")
    ax2.set_ylim(0, max(100, *(p["server_cpu_pct"] for p in curve), *(p["generator_cpu_pct"] for p in curve)) * 1.15)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=7)
    ax.set_title(f"ramboot boot storm, {image_mb:g} MB image, 2 shared cores", fontsize=9)
    if large:
        p = large[0]
        ax = axes[0][1]
        ax.bar([0, 1], [p["p50_s"], p["p99_s"]], color=["tab:blue", "tab:orange"])
        ax.set_ylabel("seconds from power-on to booted")
        ax2 = ax.twinx()
        ax2.bar([2.2, 3.2], [p["server_cpu_pct"], p["generator_cpu_pct"]], color=["tab:red", "tab:gray"])
        ax2.set_ylabel("CPU, % of one core")
        ax2.set_ylim(0, max(100, p["server_cpu_pct"], p["generator_cpu_pct"]) * 1.15)
        ax.set_xticks([0, 1, 2.2, 3.2], ["p50", "p99", "server\nCPU", "generator\nCPU"], fontsize=8)
        ax.set_xlabel(_label(p, f"{p['aggregate_mb_s']:,.0f} MB/s").replace("\n", ", "), fontsize=8)
        ax.set_title(f"N = {p['clients']:,}, {p['image_mb']:g} MB image", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="100,300,1000,3000")
    ap.add_argument("--image-mb", type=float, default=8)
    ap.add_argument("--large", default="200x256", help="NxMB: one more point with a large image ('' for none)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "storm-curve.png")
    ap.add_argument("--json", type=Path)
    a, extra = ap.parse_known_args()
    if os.geteuid() != 0:
        print("storm_curve: needs root (network namespaces)", file=sys.stderr)
        return 2
    todo = [(int(x), a.image_mb, "curve") for x in a.clients.split(",")]
    if a.large:
        n, mb = a.large.split("x")
        todo.append((int(n), float(mb), "large"))
    points: list[dict[str, Any]] = []
    print(f"{'N':>6} {'MB':>5} {'load':>5} {'booted':>11} {'p50 s':>6} {'p99 s':>6} {'max s':>6} {'MB/s':>6}"
          f" {'srv CPU s':>9} {'srv %':>5} {'gen CPU s':>9} {'gen %':>5} {'busy %':>6}  bound")
    for n, mb, kind in todo:
        load = os.getloadavg()[0]
        p = run_point(n, mb, extra)
        p["load_before"], p["kind"] = load, kind
        points.append(p)
        if "p50_s" in p:
            print(f"{n:6d} {mb:5g} {load:5.2f} {p['ok']:5d}/{n:<5d} {p['p50_s']:6.2f} {p['p99_s']:6.2f}"
                  f" {p['max_s']:6.2f} {p['aggregate_mb_s']:6.0f} {p['server_cpu_s']:9.1f} {p['server_cpu_pct']:5.0f}"
                  f" {p['generator_cpu_s']:9.1f} {p['generator_cpu_pct']:5.0f} {p['machine_busy_pct']:6.0f}"
                  f"  {p['bound']}", flush=True)
        else:
            print(f"{n:6d} {mb:5g} {load:5.2f} ERROR {p.get('error', '')[:200]}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(points, indent=1))
    plot([p for p in points if p["kind"] == "curve"], [p for p in points if p["kind"] == "large"], a.png, a.image_mb)
    print(f"plot: {a.png}")
    return 0 if all(p.get("failed", 1) == 0 for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
