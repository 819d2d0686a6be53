"""The storm's report: the summary of one run from its clients' results and the figures
measured around them, which side bound it, and the text `storm` prints."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TypedDict

from ramboot.lab.impair import WireCounters

from .common import ClientRecord


class Summary(TypedDict):
    clients: int
    image_mb: float
    ok: int
    failed: int
    failure_reasons: dict[str, int]
    p50_s: float
    p99_s: float
    max_s: float
    wall_s: float
    phase_p50_s: dict[str, float]
    phase_p99_s: dict[str, float]
    dhcp_retries: int
    tftp_retries: int
    boot_retries: int
    impairment: str
    wire: dict[str, WireCounters]
    bytes: int
    aggregate_mb_s: float
    bound_mb_s: float
    server_cpu_s: float
    server_cpu_pct: float
    generator_cpu_s: float
    generator_cpu_pct: float
    generator_cpu_pct_max: float
    machine_busy_pct: float
    load_start: float
    load_end: float
    server_rss_mb_start: float
    server_rss_mb_peak: float
    server_alive: bool
    stray_dhcp: int
    workers: int
    servers: int
    killed_after_s: float | None
    restarts: int
    in_flight_at_kill: int
    acks_by_server: dict[str, int]
    seed: bool
    link_mbit: float
    server_tx_bytes: int
    bound: str
    serve_workers: int  # the server's `[serve] workers`
    api_requests: int  # the operator's probe during the storm (apiprobe.py)
    api_errors: int
    api_p50_ms: float
    api_p99_ms: float
    addresses_twice: int  # booted clients that were given an address another booted client also got
    server_main_cpu_s: float  # of server_cpu_s, the main process's own (DHCP, scripts, API); the rest: workers


class Measured(TypedDict):
    """What the orchestrator measured around the generators, for `summarize()`."""

    wall: float  # the storm's own duration (from the common power-on), over which CPU shares are taken
    bound_mb_s: float
    server_tx_bytes: int
    gen_cpu_s: list[float]
    stray_dhcp: int
    server_cpu_s: float
    busy: tuple[int, int]  # the machine's (busy, total) jiffies over the storm
    load_start: float
    load_end: float
    server_rss_start: int
    server_rss_peak: int
    server_alive: bool
    killed_at: list[float]  # CLOCK_MONOTONIC when the first server was killed, if it was
    api_ms: list[float]  # the API probe's latencies through the storm
    api_errors: int
    server_main_cpu_s: float  # the first server's main process alone (without its workers)


def _pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[k]


def _count_servers(results: list[ClientRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for sid in r.get("servers", ()):
            out[sid] = out.get(sid, 0) + 1
    return out


def summarize(results: list[ClientRecord], m: Measured, *, clients: int, image_mb: float, workers: int,
              servers: int, kill_after: float | None, impairment: str, wire: dict[str, WireCounters],
              seed: bool, link_mbit: float, serve_workers: int = 1) -> Summary:
    ok = [r for r in results if r["ok"]]
    bad = [r for r in results if not r["ok"]]
    times = [r["total"] for r in ok]
    nbytes = sum(r["bytes"] for r in results)
    reasons: dict[str, int] = {}
    for r in bad:
        key = re.sub(r"\d+(\.\d+)?", "N", r["error"])[:120]
        reasons[key] = reasons.get(key, 0) + 1
    phases = sorted({k for r in ok for k in r["phases"]},
                    key=lambda k: list(ok[0]["phases"]).index(k) if ok and k in ok[0]["phases"] else 99)
    wall, cpu, gen, killed_at = m["wall"], m["server_cpu_s"], m["gen_cpu_s"], m["killed_at"]
    summary = Summary(
        clients=clients, image_mb=image_mb, ok=len(ok), failed=len(bad), failure_reasons=reasons,
        p50_s=_pct(times, 0.5), p99_s=_pct(times, 0.99), max_s=max(times, default=0.0),
        wall_s=wall,
        phase_p50_s={k: _pct([r["phases"][k] for r in ok if k in r["phases"]], 0.5) for k in phases},
        phase_p99_s={k: _pct([r["phases"][k] for r in ok if k in r["phases"]], 0.99) for k in phases},
        dhcp_retries=sum(r["dhcp_retries"] for r in results),
        tftp_retries=sum(r["tftp_retries"] for r in results),
        boot_retries=sum(r.get("boot_retries", 0) for r in results),
        impairment=impairment,
        wire=wire,
        bytes=nbytes, aggregate_mb_s=nbytes / 2**20 / wall if wall else 0.0,
        bound_mb_s=m["bound_mb_s"],
        server_cpu_s=cpu, server_cpu_pct=100 * cpu / wall if wall else 0.0,
        generator_cpu_s=sum(gen),
        generator_cpu_pct=100 * sum(gen) / wall if wall else 0.0,
        generator_cpu_pct_max=100 * max(gen) / wall if wall else 0.0,
        machine_busy_pct=100 * m["busy"][0] / max(1, m["busy"][1]),
        load_start=m["load_start"], load_end=m["load_end"],
        server_rss_mb_start=m["server_rss_start"] / 2**20, server_rss_mb_peak=m["server_rss_peak"] / 2**20,
        server_alive=m["server_alive"], stray_dhcp=m["stray_dhcp"], workers=workers,
        servers=servers, killed_after_s=kill_after,
        restarts=sum(r.get("restarts", 0) for r in results),
        # boots under way when the server died (started before, ended after)
        in_flight_at_kill=sum(1 for r in results if killed_at and r["start"] <= killed_at[0]
                              <= r["start"] + r["total"]),
        acks_by_server=_count_servers(results),
        seed=seed, link_mbit=link_mbit, server_tx_bytes=m["server_tx_bytes"],
        bound="",
        serve_workers=serve_workers, api_requests=len(m["api_ms"]), api_errors=m["api_errors"],
        api_p50_ms=_pct(m["api_ms"], 0.5), api_p99_ms=_pct(m["api_ms"], 0.99),
        addresses_twice=len(ok) - len({r["ip"] for r in ok}), server_main_cpu_s=m["server_main_cpu_s"],
    )
    summary["bound"] = bound_side(summary)
    return summary


def bound_side(s: Summary) -> str:
    """Which side held the storm back. Within 80 % of the raw-TCP rate over the same veth it
    is the link (the kernel's copies). The server is one thread, so near a whole core it is
    the bound, and so is a generator process near its own. With the machine's cores full
    (other people's jobs included), the side that used clearly more of them is."""
    srv, gen, gmax, busy = (s["server_cpu_pct"], s["generator_cpu_pct"], s["generator_cpu_pct_max"],
                            s["machine_busy_pct"])
    if s["bound_mb_s"] and s["aggregate_mb_s"] >= 0.8 * s["bound_mb_s"]:
        return f"link ({s['aggregate_mb_s'] / s['bound_mb_s']:.0%} of the raw-TCP rate)"
    if busy >= 90:
        if abs(srv - gen) < 0.15 * max(srv, gen):
            return "both (the machine's cores, shared alike)"
        return "server" if srv > gen else "generator"
    if srv >= 85:
        return "server"
    if gmax >= 85:
        return "generator"
    return "neither (waits: round trips, timers)"


def format_summary(s: Summary) -> str:
    bound = s["bound_mb_s"]
    lines = [
        f"storm: {s['clients']} clients, image {s['image_mb']} MB: {s['ok']} booted, {s['failed']} failed"
        + ("" if s["server_alive"] else "  (SERVER DIED)")
        + (f"   wire: {s['impairment']}" if s.get("impairment") else ""),
        f"  completion   p50 {s['p50_s']:.2f} s   p99 {s['p99_s']:.2f} s   max {s['max_s']:.2f} s"
        f"   (wall {s['wall_s']:.2f} s)",
        "  phase p50    " + "   ".join(f"{k} {v:.3f}" for k, v in s["phase_p50_s"].items()),
        "  phase p99    " + "   ".join(f"{k} {v:.3f}" for k, v in s["phase_p99_s"].items()),
        f"  retries      dhcp {s['dhcp_retries']}   tftp {s['tftp_retries']}   whole boots {s.get('restarts', 0)}",
        f"  transfer     {s['bytes'] / 2**20:,.0f} MB at {s['aggregate_mb_s']:,.0f} MB/s aggregate"
        + (f"; link bound {bound:,.0f} MB/s (raw TCP into the same generator processes, nothing checked)"
           f" -> {s['aggregate_mb_s'] / bound:.0%}" if bound else ""),
        f"  server       CPU {s['server_cpu_s']:.1f} s ({s['server_cpu_pct']:.0f}% of one core)"
        f"   RSS {s['server_rss_mb_start']:.0f} -> peak {s['server_rss_mb_peak']:.0f} MB"
        + (f"; main process {s['server_main_cpu_s']:.1f} s, workers {s['server_cpu_s'] - s['server_main_cpu_s']:.1f} s"
           if s.get("serve_workers", 1) > 1 else ""),
        f"  generator    CPU {s['generator_cpu_s']:.1f} s ({s['generator_cpu_pct']:.0f}% of one core in"
        f" {s['workers']} processes, the busiest {s['generator_cpu_pct_max']:.0f}%)",
        f"  api          p50 {s.get('api_p50_ms', 0):.1f} ms   p99 {s.get('api_p99_ms', 0):.1f} ms over"
        f" {s.get('api_requests', 0)} requests, {s.get('api_errors', 0)} errors (the API and the status page,"
        f" `[serve] workers = {s.get('serve_workers', 1)}`); addresses given twice: {s.get('addresses_twice', 0)}",
        f"  bound        {s['bound']}   (machine {s['machine_busy_pct']:.0f}% busy over its {os.cpu_count()} cores,"
        f" load {s['load_start']:.1f} -> {s['load_end']:.1f})",
    ]
    if s.get("servers", 1) > 1:
        killed = (f", server 1 killed -9 after {s['killed_after_s']} s with {s['in_flight_at_kill']} boots under way"
                  if s.get("killed_after_s") is not None else "")
        lines.insert(1, f"  servers      {s['servers']} on one PostgreSQL{killed}; DHCP ACKs by server "
                        + ", ".join(f"{k} {v}" for k, v in sorted(s["acks_by_server"].items())))
    for name, c in s.get("wire", {}).items():
        lines.append(f"  wire         {name}: {c['frames']} frames, {c['lost']} lost, {c['queue_drops']} queue drops")
    for reason, count in sorted(s["failure_reasons"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  FAILED x{count}: {reason}")
    return "\n".join(lines)



def compare_workers(runs: Sequence[Summary]) -> str:
    """The storms of one run side by side by `[serve] workers`: p99 and the API's p99, and the
    first one's p99 over each other's (the issue's goal: >= 1.6 with 2 workers on 2 cores)."""
    first = runs[0]
    lines = ["workers   booted  failed  twice   p50 s   p99 s  p99 ratio   api p50 ms  api p99 ms  server CPU s"
             "  (main)"]
    for s in runs:
        ratio = first["p99_s"] / s["p99_s"] if s["p99_s"] else 0.0
        lines.append(f"{s['serve_workers']:>7}  {s['ok']:>7} {s['failed']:>7} {s['addresses_twice']:>6}"
                     f" {s['p50_s']:>7.2f} {s['p99_s']:>7.2f} {ratio:>9.2f}x  {s['api_p50_ms']:>11.1f}"
                     f" {s['api_p99_ms']:>11.1f} {s['server_cpu_s']:>13.1f} {s['server_main_cpu_s']:>7.1f}")
    return "\n".join(lines)
