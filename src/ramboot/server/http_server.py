"""The HTTP server (aiohttp): it only assembles the parts, each with one job.

- `http_context`: the application's context and plain responses;
- `http_files`: the namespace's files and scripts (sendfile, Range, ETag), the status page;
- `api`: the REST API under `/api/v1`, and its route table;
- `openapi`: the OpenAPI document, generated from that table;
- `event_stream`: the live feed (metrics and server-sent events);
- `/metrics`: Prometheus text, here.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import Config
from ..inventory.store import Store
from ..namespace import Namespace
from ..policy import Booter
from . import api, event_stream
from .cluster import Cluster
from .events import EventLog
from .http_context import CTX, Ctx
from .http_files import namespace_file, static_file, status_page

log = logging.getLogger("ramboot.http")


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(config: Config, namespace: Namespace, booter: Booter, store: Store, events: EventLog,
             cluster: Cluster | None = None) -> web.Application:
    app = web.Application(client_max_size=1 << 20, middlewares=[api.error_middleware])
    app[CTX] = Ctx(config, namespace, booter, store, events, cluster)
    event_stream.install(app)
    api.add_routes(app)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/", status_page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/{tail:.*}", namespace_file)  # and HEAD
    return app


class HttpServer:
    def __init__(self, runner: web.AppRunner, port: int):
        self.runner = runner
        self.port = port

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_http(
    config: Config,
    namespace: Namespace,
    booter: Booter,
    store: Store,
    events: EventLog,
    host: str | None = None,
    port: int | None = None,
    cluster: Cluster | None = None,
) -> HttpServer:
    """Serve until `close()`. host None: `http.bind`; port None: `http.port` (0: any free port)."""
    app = make_app(config, namespace, booter, store, events, cluster)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host or config.http.bind, config.http.port if port is None else port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info("http listening", extra={"host": host or config.http.bind, "port": bound})
    return HttpServer(runner, bound)
