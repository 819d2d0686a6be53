"""The boot-storm generator stays working: 20 PXE clients against a real `ramboot serve`.

Runs the whole chain in two namespaces the test makes (DHCP as PXE then as
iPXE, TFTP loader, HTTP script/kernel/initrd/root with sha256, the `booted`
report) and checks every client got through. A few seconds.
"""

from __future__ import annotations

import os
import shutil

import pytest
from bench.storm.orchestrator import run_storm
from bench.storm.report import _pct, format_summary

from ramboot.lab.impair import Impairment

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for network namespaces"
)


def test_percentiles() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert _pct(xs, 0.5) in (50.0, 51.0)
    assert _pct(xs, 0.99) == 99.0
    assert _pct([], 0.5) == 0.0
    assert _pct([3.0], 0.99) == 3.0


@pytest.mark.netns
@needs_netns
def test_storm_20_clients_all_boot() -> None:
    s = run_storm(n=20, image_mb=1, bound_seconds=0, verbose=False, workers=1, timeout=60)
    text = format_summary(s)
    assert s["server_alive"], text
    assert s["failed"] == 0, text
    assert s["ok"] == 20, text
    # every client moved the loader, the script, kernel, initrd and the 1 MiB root
    assert s["bytes"] >= 20 * (1 << 20), text
    assert 0 < s["p50_s"] <= s["p99_s"] <= s["max_s"], text
    assert set(s["phase_p50_s"]) == {"dhcp", "tftp", "dhcp-ipxe", "script", "kernel+initrd", "rootfs", "report"}, text
    assert s["server_rss_mb_peak"] > 0 and s["server_cpu_s"] > 0, text


@pytest.mark.netns
@needs_netns
def test_storm_clients_seed_their_peers_behind_a_limited_link() -> None:
    """Simulated nodes seed as booted ones do: the server's link (tc tbf, 100 Mbit/s) carries
    each client's kernel and initrd but only a few roots; the rest come from peers, byte-checked."""
    n, mb = 24, 8
    s = run_storm(n=n, image_mb=mb, bound_seconds=0, verbose=False, workers=2, timeout=120, seed=True, link_mbit=100)
    text = format_summary(s)
    assert s["failed"] == 0 and s["ok"] == n, text
    kernel_initrd = n * (mb / 16 + mb / 8) * 2**20
    roots_from_server = (s["server_tx_bytes"] - kernel_initrd) / (mb * 2**20)
    assert roots_from_server < n / 2, (roots_from_server, s["server_tx_bytes"], text)  # without seeding: n
    assert s["bytes"] >= n * mb * 2**20, text  # yet every client got (and compared) a whole root


@pytest.mark.netns
@needs_netns
def test_storm_two_servers_one_killed_mid_storm_costs_no_boot() -> None:
    """Two servers on one throwaway PostgreSQL; the first is killed -9 while boots are under way."""
    # 30 x 114 MB: a few seconds of downloads, so the kill lands mid-boot however fast the generator
    s = run_storm(n=30, image_mb=96, bound_seconds=0, verbose=False, workers=1, timeout=120, servers=2,
                  kill_after=1.0)
    text = format_summary(s)
    assert s["failed"] == 0 and s["ok"] == 30, text
    assert s["server_alive"], text  # the survivor
    assert s["in_flight_at_kill"] >= 5, text  # the kill really hit boots in progress
    assert {"10.77.0.1", "10.77.0.2"} <= set(s["acks_by_server"]), text  # both served before the kill


def test_storm_200_clients_through_loss_and_delay() -> None:
    """200 clients at once over a wire that drops 5 % of the frames and holds each 20 ms, each way."""
    seed = int.from_bytes(os.urandom(4), "big")
    s = run_storm(n=200, image_mb=0.5, verbose=False, workers=2, timeout=300,
                  impair=Impairment(loss=0.05, delay=0.020, seed=seed))
    text = format_summary(s) + f"\nseed {seed}"
    assert s["server_alive"], text
    assert s["failed"] == 0 and s["ok"] == 200, text
    wire = s["wire"]
    assert len(wire) == 2, text
    for d in wire.values():  # the loss really was on the path, both ways
        assert d["frames"] > 10_000 and 0.03 < d["lost"] / d["frames"] < 0.07, text
    assert s["tftp_retries"] > 0, text  # lock-step TFTP lost blocks and timed out: recovered
    print(text)
