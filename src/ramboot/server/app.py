"""`ramboot serve`: wires the store, the booter and the three servers together.

Runs in the foreground, logs to stderr, and stops cleanly on SIGTERM: the
servers close, pending events and leases are flushed, nothing is lost.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .. import metrics
from ..access import AccessRule
from ..api_token import ensure_admin_token
from ..config import Config, ConfigError
from ..images.catalog import Catalog
from ..inventory.store import Store
from ..names import IMAGES
from ..namespace import Namespace, install_loaders
from ..netif import interface_exists, interface_ipv4, interface_ipv6
from ..overlays import OverlayRenderer
from ..policy import Booter
from ..tls import CaArchive, TlsFiles, ensure
from ..uki import UkiCache
from .cluster import Cluster
from .dhcp6_server import start_dhcp6
from .dhcp_server import start_dhcp
from .events import EventLog
from .http_server import make_app, start_http
from .ra_server import start_ra
from .tftp_server import start_tftp
from .workers import WorkerPool, probe_ports

log = logging.getLogger("ramboot.serve")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (a cheaper loop per datagram) where it is installed: a dependency on Linux."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Closes(Protocol):
    """What `App` runs: a server, the cluster member, the console capture."""

    async def close(self) -> None: ...


def server_address6(config: Config) -> str | None:
    """The IPv6 address clients are told: `network.address6`, else the interface's first global
    one; None when IPv6 is not served (no address6 and DHCPv6 off)."""
    if config.network.address6 is not None:
        return str(config.network.address6)
    if config.dhcp6.mode == "off":
        return None
    addr = interface_ipv6(config.network.interface)
    if addr is None:
        raise ConfigError(
            f"network.interface: {config.network.interface!r} has no global IPv6 address; "
            "set network.address6 or give the interface one (dhcp6.mode = \"full\")"
        )
    return addr


def check_interface(config: Config) -> None:
    """The interface DHCP listens on (and whose address is the default) exists: said by its name,
    before anything starts (it was `[Errno 19] No such device` after the first listeners)."""
    name = config.network.interface
    if (config.dhcp.mode != "off" or config.network.address is None) and not interface_exists(name):
        raise ConfigError(f"network.interface: interface {name!r} does not exist (`ip link` lists them)")


def server_address(config: Config) -> str:
    """The address the server names first: its IPv4 address, or with IPv4 off entirely
    (`[dhcp] mode = "off"` and no IPv4 on the interface) its IPv6 address."""
    if config.network.address is not None:
        return str(config.network.address)
    check_interface(config)
    addr = interface_ipv4(config.network.interface)
    if addr is None and config.dhcp.mode == "off":
        addr = server_address6(config)
    if addr is None:
        raise ConfigError(
            f"network.interface: {config.network.interface!r} has no IPv4 address; "
            "set network.address or give the interface an address"
        )
    return addr


def raise_fd_limit() -> None:
    """Every TFTP transfer holds a socket and a file: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def validate_range(config: Config, server_ip: str) -> None:
    """A full-mode range that holds the server's own address is a typo: refuse it at start."""
    if config.dhcp.mode != "full" or ":" in server_ip:  # no IPv4 address: no IPv4 range to check
        return
    for i, sub in enumerate(config.dhcp.subnets()):
        first, last = sub.range_bounds()
        if int(first) <= int(ipaddress.IPv4Address(server_ip)) <= int(last):
            key = "dhcp.range" if config.dhcp.range and i == 0 else f"dhcp.subnet {sub.range}"
            raise ConfigError(f"{key}: includes the server's own address {server_ip}")


class Services:
    """The running servers, so tests and the CLI can start and stop them as one."""

    def __init__(self, config: Config, cluster_type: type[Cluster] = Cluster, workers: int = 1):
        """`workers` > 1: HTTP and TFTP are served by that many worker processes (server/workers.py);
        this process keeps DHCP, the API and the status page, on a private socket for them."""
        self.config = config
        self.server_ip = server_address(config)
        self.server_ip6 = server_address6(config)
        validate_range(config, self.server_ip)
        check_interface(config)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # the API takes a token for every read and write (docs/api.md); where it is, said once serving
        self.token_note = ensure_admin_token(config)
        self.store = Store.for_config(config)
        # The images and their manifests, one cache for the policy, HTTP and the overlays.
        self.catalog = Catalog(config.data_dir)
        self.booter = Booter(config, self.store.directory, self.server_ip, catalog=self.catalog)
        # This server among the others on the database: the policy names every live one
        # holding an image to the node (fallback URLs).
        self.cluster = cluster_type(config, self.store, self.server_ip, self.booter.http_base)
        self.booter.mirrors = self.cluster.mirrors
        overlays = OverlayRenderer(config.data_dir, self.store, self.catalog)
        # ramboot holds the leases (IPv4, IPv6 or both): the access rule proves nodes by them.
        lease_mode = "full" if "full" in (config.dhcp.mode, config.dhcp6.mode) else config.dhcp.mode
        access = AccessRule(lease_mode, config.security.proxy_secrets, self.store.directory, self.store.credentials)
        # The HTTPS listener's certificate (made or renewed in DATA/tls/), and the CA nodes pin.
        v6 = (self.server_ip6,) if self.server_ip6 and self.server_ip6 != self.server_ip else ()
        self.tls: TlsFiles | None = ensure(config, self.server_ip, *v6) if config.http.https_port else None
        # Dual stack: requests over IPv6 get URLs that name the server's IPv6 address.
        self.booter6 = self.booter.using(self.store.directory, server_ip=v6[0]) if v6 else None
        self.namespace = Namespace(config.data_dir, self.booter, overlays, access,
                                   ca=CaArchive(self.tls.ca) if self.tls else None, booter6=self.booter6,
                                   uki=UkiCache(config.data_dir / IMAGES) if config.security.tpm_measured else None)
        self.events = EventLog(self.store.events, server=self.cluster.name, keep_days=config.database.events_keep_days,
                               keep_per_node=config.database.events_keep_per_node)
        self.servers: list[_Closes] = []
        self.pool = WorkerPool(config, workers) if workers > 1 else None  # last: it makes a directory

    async def start(self) -> None:
        """Every listener is bound before anything says it serves: a port in use is the first
        and only line (naming the port), not the last of several that suggest success."""
        raise_fd_limit()
        if self.pool is not None:  # the workers share their ports with each other, and with nothing else
            probe_ports(self.config, ":" not in self.server_ip, self.server_ip6 is not None, self.tls is not None)
        metrics.watch_tasks(asyncio.get_running_loop())
        loaders = install_loaders(self.config.data_dir)
        self.events.start()
        cfg = self.config
        what = f"http port {cfg.http.port}" + (f" or https port {cfg.http.https_port}" if self.tls else "")
        app = None
        if self.pool is not None:
            app = make_app(cfg, self.namespace, self.booter, self.store, self.events, self.cluster)
            self.pool.install(app)
        http = await _bound(what, start_http(cfg, self.namespace, self.booter, self.store, self.events,
                                             cluster=self.cluster, tls=self.tls.context() if self.tls else None,
                                             ipv6=self.server_ip6 is not None, app=app,
                                             unix_path=self.pool.socket_path if self.pool else None))
        self.servers.append(http)
        if ":" not in self.server_ip and self.pool is None:  # with workers, they serve TFTP (below)
            self.servers.append(await _bound(f"tftp port {cfg.tftp.port}",
                                             start_tftp(cfg, self.namespace, self.events)))
        if self.server_ip6 and self.pool is None:
            self.servers.append(await _bound(f"tftp port {cfg.tftp.port} (IPv6)",
                                             start_tftp(cfg, self.namespace, self.events, host="::")))
        # Registered (and LISTENing for the others' leases) before DHCP loads them: none is missed.
        await self.cluster.start()
        self.servers.insert(0, self.cluster)  # stopped last: deregistered once nothing is served any more
        if cfg.dhcp.mode != "off":
            self.servers.append(await _bound(f"dhcp on interface {cfg.network.interface!r}",
                                             start_dhcp(cfg, self.booter, self.store, self.events, self.server_ip,
                                                        cluster=self.cluster)))
        if cfg.dhcp6.mode == "full" and self.server_ip6:
            self.servers.append(await _bound(f"dhcp6 on interface {cfg.network.interface!r}",
                                             start_dhcp6(cfg, self.booter, self.store, self.events, self.server_ip6)))
        if self.pool is not None:
            self.servers.append(self.pool)  # stopped first: no file is served once DHCP and the API stop
            await self.pool.start()
        log.info("cluster: %s registered as %s with images %s", self.cluster.name, self.cluster.http_base,
                 ", ".join(sorted(self.cluster.held)) or "none")
        if self.token_note:
            log.info("%s", self.token_note)
        log.info("boot programs: %s", ", ".join(loaders) or "none found")
        if self.tls is not None:
            log.info("https on port %d; nodes pin %s (sha256 %s)", http.https_port, self.tls.ca,
                     self.tls.fingerprint())
        # Answer IPv6 router solicitations (full mode: all; proxy mode: guarded) so iPXE's
        # "Configuring" does not wait ~16 s for IPv6 to time out (server/ra_server.py).
        ra = await start_ra(self.config, self.events)
        if ra is not None:
            self.servers.append(ra)
        if self.config.console.capture:
            from ..power.console import ConsoleCapture

            capture = ConsoleCapture(self.config, self.store)
            capture.start()
            self.servers.append(capture)
        log.info(
            "serving on %s: dhcp=%s dhcp6=%s tftp=%d http=%d data=%s",
            " and ".join(dict.fromkeys(a for a in (self.server_ip, self.server_ip6) if a)),
            self.config.dhcp.mode,
            self.config.dhcp6.mode,
            self.config.tftp.port,
            self.config.http.port,
            self.config.data_dir,
        )

    async def stop(self) -> None:
        for srv in reversed(self.servers):
            try:
                await srv.close()
            except Exception:
                log.exception("error while stopping %s", type(srv).__name__)
        self.servers.clear()
        await self.events.stop()
        self.store.close()


T = TypeVar("T")


async def _bound(what: str, starting: Awaitable[T]) -> T:
    """A listener started, or an OSError that names it (`http port 80: Address already in use`)."""
    try:
        return await starting
    except OSError as e:
        raise OSError(f"{what}: {os.strerror(e.errno) if e.errno else e}") from None


M_ARENA_MAX = -8  # <malloc.h>
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Two glibc malloc arenas, not 8 per core (unless MALLOC_ARENA_MAX says otherwise).

    The server's worker threads (asyncio.to_thread: the store's reads for the API, the
    live feed and the status page) each got an arena of their own, and each arena keeps
    the high-water mark of what its thread once held: under a 30-minute soak RSS crept
    by ~10 MiB with no live object behind it (Python's blocks and SQLite's own memory
    stayed flat); with two arenas the level was 12 MiB lower and the creep a third of
    it (docs/benchmarks.md, "Soak"). Called before any thread starts; a no-op off glibc.
    """
    import ctypes
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits (CPython's default: 0.005)


def tune_interpreter() -> None:
    """Keep the cyclic collector off the per-datagram path, and worker threads off the loop's back.

    A DHCP storm allocates a few dozen objects per packet and keeps one lease
    object per client. With CPython's default thresholds (700, 10, 10) the
    collector ran every few packets and walked every live object every few
    hundred: about 30 % of the CPU at a few thousand DORA/s (measured, see
    docs/benchmarks.md). Start-up objects are frozen out of the scans; the
    young generation is collected every 50,000 allocations instead of 700.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # The store's worker threads (the leases table's catch-up, the event flush) run Python
    # between sqlite calls; with CPython's 5 ms switch interval the loop waited up to 5 ms
    # for the GIL behind them, and every DHCP reply queued behind it. 0.5 ms bounds that.
    sys.setswitchinterval(SWITCH_INTERVAL)


def log_memory() -> None:
    """SIGUSR2: where the memory is, in the log: live objects by type (the 12 most numerous),
    and, when the interpreter traces allocations (PYTHONTRACEMALLOC=1), the 12 biggest sites.
    On demand only (it walks every object), for a soak's or an operator's question."""
    import collections
    import sys
    import tracemalloc

    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    log.info("memory: %d Python blocks; objects by type: %s", sys.getallocatedblocks(),
             ", ".join(f"{k} {v}" for k, v in counts.most_common(12)))
    if tracemalloc.is_tracing():
        for st in tracemalloc.take_snapshot().statistics("lineno")[:12]:
            log.info("memory: %s", st)


async def serve(config: Config) -> None:
    limit_malloc_arenas()
    services = Services(config, workers=config.serve.worker_count())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, log_memory)
    try:
        await services.start()
        tune_interpreter()
        await stop.wait()
        log.info("stopping")
    finally:
        await services.stop()
    log.info("stopped")

