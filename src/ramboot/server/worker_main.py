"""A worker process of `serve` (server/workers.py holds the pool and what it shares): it binds
HTTP, HTTPS and TFTP with SO_REUSEPORT beside its siblings and hands the rest to the main
process. Its own module, so that the pool, which `server/app.py` starts, imports nothing
of the app back."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from typing import Any

import aiohttp
from aiohttp import web

from .. import metrics
from ..config import Config
from ..logs import setup_logging
from .app import Services, _bound, limit_malloc_arenas, loop_factory, raise_fd_limit, tune_interpreter
from .http_context import CTX
from .http_server import make_app, start_http
from .tftp_server import start_tftp
from .workers import WORKER, CurrentNamespace, Follower, ForwardingEvents, proxy_middleware, share_caps


def _die_with_parent(parent: int) -> None:
    """A worker whose main process was killed outright goes too (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)


async def run_worker(config: Config, index: int, socket_path: str, key: str) -> None:
    limit_malloc_arenas()
    raise_fd_limit()
    svc = Services(config, cluster_type=Follower)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path), auto_decompress=False,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
    events = ForwardingEvents(session, index, key)
    namespace = CurrentNamespace(svc.namespace, socket_path, key)
    servers: list[Any] = []
    try:
        metrics.watch_tasks(loop)
        events.start()
        await svc.cluster.start()
        app = make_app(config, namespace, svc.booter, svc.store, events, svc.cluster)
        app[CTX].seeds = None  # the main process holds the seeders: it says where a seedable download goes
        app.middlewares.insert(0, proxy_middleware(session, config.scale.seed, key, index))

        async def which(request: web.Request, response: web.StreamResponse) -> None:
            response.headers.setdefault(WORKER, str(index))  # which worker answered (tests, and curl -i)
        app.on_response_prepare.append(which)
        try:
            servers.append(await _bound(f"http port {config.http.port}", start_http(
                config, namespace, svc.booter, svc.store, events, cluster=svc.cluster,
                tls=svc.tls.context() if svc.tls else None, ipv6=svc.server_ip6 is not None, reuse_port=True,
                app=app)))
            if ":" not in svc.server_ip:
                servers.append(await _bound(f"tftp port {config.tftp.port}",
                                            start_tftp(config, namespace, events, reuse_port=True)))
            if svc.server_ip6:
                servers.append(await _bound(f"tftp port {config.tftp.port} (IPv6)",
                                            start_tftp(config, namespace, events, host="::", reuse_port=True)))
        except OSError as e:
            print(f"error {e}", flush=True)  # the main process says it, in one line
            return
        tune_interpreter()
        print("ready", flush=True)
        await stop.wait()
    finally:
        for s in reversed(servers):
            with contextlib.suppress(Exception):
                await s.close()
        await svc.cluster.close()
        await events.stop()
        await session.close()
        svc.store.close()


def main() -> None:
    """`python -m ramboot.server.worker_main INDEX SOCKET [-v]`, the config and key on stdin (from WorkerPool)."""
    index, socket_path = int(sys.argv[1]), sys.argv[2]
    given = json.loads(sys.stdin.read())
    _die_with_parent(given["parent"])
    config = share_caps(Config.model_validate(given["config"]), given["workers"])
    setup_logging("-v" in sys.argv[3:], config.log.format)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(run_worker(config, index, socket_path, given["key"]))


if __name__ == "__main__":
    main()
