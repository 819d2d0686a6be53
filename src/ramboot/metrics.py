"""Prometheus metrics, all named `ramboot_*`, in the process-wide default registry.

Every server appends its own here, so `/metrics` shows them all in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

if TYPE_CHECKING:
    import asyncio

HTTP_BYTES = Counter("ramboot_http_bytes", "Bytes sent over HTTP, by kind of file", ["kind"])
HTTP_REFUSED = Counter("ramboot_http_refused", "HTTP requests refused (403) by what they asked for", ["kind"])
BOOTS_CONTESTED = Counter("ramboot_boots_contested", "Second claims on one boot's credential (access.py)")
TPM_ATTESTATIONS = Counter("ramboot_tpm_attestations", "Node TPM reports by outcome (tpm_gate.py)", ["outcome"])
BOOTS = Counter("ramboot_boots", "Boot events seen, by stage", ["stage"])
BOOT_DURATION = Histogram(
    "ramboot_boot_duration_seconds",
    "From a node's first DHCP or script event to its `booted` event",
    buckets=(5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200),
)
ROOT_DOWNLOAD_MBPS = Histogram(
    "ramboot_root_download_mbps",
    "Root image download throughput reported by the node (megabits per second)",
    buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000),
)

# Seeding (ramboot.server.seeding): booted nodes serving their root to peers.
SEED_PEERS = Gauge("ramboot_seed_peers", "Booted nodes seeding their verified root (and not refused by a peer)")
SEED_REDIRECTS = Counter("ramboot_seed_redirects", "Root and modules downloads redirected to a seeding peer")
SEED_BYTES = Counter("ramboot_seed_bytes", "Bytes seeding peers served, as the downloading nodes reported them")
SEED_REFUSED = Counter("ramboot_seed_refused", "Seeding peers a downloading node refused (failed, stalled, bad bytes)")

# TFTP (ramboot.server.tftp_server)
TFTP_TRANSFERS = Counter("ramboot_tftp_transfers", "TFTP read requests, by outcome", ["outcome"])
TFTP_BYTES = Counter("ramboot_tftp_bytes", "TFTP payload bytes sent, each block counted once")
TFTP_RETRANSMITS = Counter("ramboot_tftp_retransmits", "TFTP packets sent again (timeouts and window restarts)")

# DHCP (ramboot.server.dhcp_server): every datagram counted once, by message type and what we did.
DHCP_PACKETS = Counter(
    "ramboot_dhcp_packets", "DHCP datagrams received, by message type and outcome", ["type", "outcome"]
)
DHCP_BINDS_REFUSED = Counter(
    "ramboot_dhcp_binds_refused_total",
    "ACKs withheld (a NAK sent instead) because the database gave the address to another server's client",
)
DHCP_COMMIT_SECONDS = Histogram(
    "ramboot_dhcp_lease_commit_seconds",
    "Time to commit one batch of lease changes (group commit before the ACKs go out)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)

# Everything a server threw away or refused, and why: one family for all of them, so
# a flood shows up in one place. protocol: dhcp | tftp | http | api. The reasons are
# listed in docs/api.md ("Metrics").
DROPPED = Counter("ramboot_dropped", "Datagrams and requests dropped or refused, by protocol and reason",
                  ["protocol", "reason"])
TFTP_RING_BYTES = Gauge("ramboot_tftp_ring_bytes", "Bytes the TFTP transfers' rings hold now ([tftp] max_memory_mib)")
TFTP_RING_PEAK = Gauge("ramboot_tftp_ring_peak_bytes", "The most the TFTP transfers' rings have held at once")
TFTP_ACTIVE = Gauge("ramboot_tftp_transfers_active", "TFTP transfers in progress, by state", ["state"])

# The serve process itself (`make soak` watches these stay flat; RSS and open fds are also
# prometheus_client's own process_resident_memory_bytes and process_open_fds).
ASYNCIO_TASKS = Gauge("ramboot_asyncio_tasks", "asyncio tasks alive in the server's event loop (read at each scrape)")
SSE_CLIENTS = Gauge("ramboot_sse_clients", "Clients connected to /api/v1/events/stream")


PY_BLOCKS = Gauge("ramboot_python_allocated_blocks", "Memory blocks Python's allocator holds (sys.getallocatedblocks)")
SQLITE_MEMORY = Gauge("ramboot_sqlite_memory_bytes", "Memory SQLite's library holds in this process (page caches and "
                      "more; sqlite3_memory_used)")


def watch_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """ASYNCIO_TASKS reads `len(asyncio.all_tasks(loop))` whenever /metrics is scraped (in the loop);
    the Python and SQLite memory gauges are read then too, so a soak can tell where RSS goes."""
    import asyncio
    import ctypes
    import ctypes.util
    import sqlite3
    import sys

    ASYNCIO_TASKS.set_function(lambda: float(len(asyncio.all_tasks(loop))))
    PY_BLOCKS.set_function(lambda: float(sys.getallocatedblocks()))
    del sqlite3  # loaded first, so the library below is the one Python's sqlite3 module uses
    name = ctypes.util.find_library("sqlite3")
    try:
        used = ctypes.CDLL(name).sqlite3_memory_used if name else None
    except (OSError, AttributeError):
        used = None
    if used is not None:
        used.restype = ctypes.c_int64
        SQLITE_MEMORY.set_function(lambda: float(used()))


_dropped: dict[tuple[str, str], Counter] = {}


def dropped(protocol: str, reason: str, n: int = 1) -> None:
    """DROPPED[protocol, reason] += n, with the labelled child looked up once."""
    c = _dropped.get((protocol, reason))
    if c is None:
        c = _dropped[(protocol, reason)] = DROPPED.labels(protocol, reason)
    c.inc(n)


class PowerActions:
    """`ramboot_power_actions_total{action,result}`: the counts live in the database (the CLI acts
    on BMCs from its own process; every server on one database shows the same), read before each
    scrape (`counts`)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily("ramboot_power_actions", "Power actions through nodes' BMCs, by action and result "
                                  "(ok, error)", labels=["action", "result"])
        for (action, result), n in sorted(self.counts.items()):
            fam.add_metric([action, result], n)
        yield fam


POWER_ACTIONS = PowerActions()
REGISTRY.register(POWER_ACTIONS)


def exposition() -> str:
    """This process's samples as Prometheus text (a worker's report to the main process)."""
    from prometheus_client import generate_latest

    return generate_latest().decode()


WORKER_SERVED = Counter("ramboot_worker_served", "Files served by each worker process ([serve] workers)",
                        ["worker", "protocol"])


class Merged:
    """This process's metrics with each worker's last report added in: the same names and
    labels as one process would show (counters, gauges and histograms summed; a ring peak
    becomes the sum of the workers' peaks, a bound). The interpreter's own `process_*` and
    `python_*` figures stay this process's. `ramboot_worker_served_total` tells the workers apart."""

    def __init__(self, workers: dict[str, str]):
        self.workers = workers

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.parser import text_string_to_metric_families

        families = {f.name: f for f in REGISTRY.collect()}
        index = {(s.name, tuple(sorted(s.labels.items()))): (f, i)
                 for f in families.values() for i, s in enumerate(f.samples)}
        for text in list(self.workers.values()):
            try:
                parsed = list(text_string_to_metric_families(text))
            except ValueError:
                continue
            for fam in parsed:
                if fam.name.startswith(("process_", "python_")) or fam.name.endswith("_created"):
                    continue
                have = families.setdefault(fam.name, fam)
                for s in fam.samples:
                    if s.name.endswith("_created"):
                        continue  # a time, not an amount: this process's stands
                    key = (s.name, tuple(sorted(s.labels.items())))
                    at = index.get(key)
                    if at is not None:
                        f, i = at
                        f.samples[i] = f.samples[i]._replace(value=f.samples[i].value + s.value)
                    elif have is not fam:
                        have.samples.append(s)
                        index[key] = (have, len(have.samples) - 1)
                    else:
                        index[key] = (fam, fam.samples.index(s))
        yield from families.values()
