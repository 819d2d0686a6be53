"""The HTTP server (aiohttp): it only assembles the parts, each with one job.

- `http_context`: the application's context and plain responses;
- `http_files`: the namespace's files and scripts (sendfile, Range, ETag), the status page;
- `api`: the REST API under `/api/v1`, and its route table;
- `openapi`: the OpenAPI document, generated from that table;
- `event_stream`: the live feed (metrics and server-sent events);
- `/metrics`: Prometheus text, here, behind the API's read access.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics
from ..config import Config
from ..inventory.store import Store
from ..namespace import Namespace
from ..policy import Booter
from ..tpm_gate import TpmGate
from . import api, event_stream
from .cluster import Cluster
from .events import EventLog
from .http_context import CTX, Ctx, error_json
from .http_files import favicon, namespace_file, static_file, status_page
from .seeding import Seeds

log = logging.getLogger("ramboot.http")

WORKER_METRICS = web.AppKey("worker_metrics", dict)  # with workers: each one's last Prometheus text, by index


# aiohttp's exception classes for a request it could not parse, as the reason label.
_REASONS = {
    "BadStatusLine": "bad-request-line", "BadHttpMethod": "bad-method", "LineTooLong": "line-too-long",
    "InvalidHeader": "bad-header", "InvalidURLError": "bad-url", "ContentLengthError": "bad-body",
    "TransferEncodingError": "bad-body", "DecompressSizeError": "bad-body",
}
_ROUTINE = (HttpProcessingError, ConnectionError, asyncio.TimeoutError)


def rejection_reason(exc: BaseException) -> str:
    if isinstance(exc, HttpProcessingError):
        return _REASONS.get(type(exc).__name__, "bad-request")
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return "client-gone"


class RequestLog(logging.Logger):
    """aiohttp's per-connection logger (it logs every rejected request with a traceback).

    A request aiohttp could not parse (a bad request line, a header over
    8190 bytes, a bad method...) or a client that went away is routine on a
    network: it costs a counter, `ramboot_dropped_total{protocol="http",reason}`,
    and one debug line. Anything else is a real fault and keeps its traceback.
    """

    def __init__(self) -> None:
        super().__init__("ramboot.http.requests")
        self.parent = logging.getLogger("ramboot.http")

    def _routine(self, exc_info: Any) -> bool:
        exc = exc_info if isinstance(exc_info, BaseException) else (sys.exc_info()[1] if exc_info else None)
        if not isinstance(exc, _ROUTINE):
            return False
        reason = rejection_reason(exc)
        metrics.dropped("http", reason)
        if self.isEnabledFor(logging.DEBUG):
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            super().debug("http: request rejected: %s: %s", reason, detail)
        return True

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if not self._routine(exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kw)

    def error(self, msg: object, *args: object, exc_info: Any = None, **kw: Any) -> None:
        if not (exc_info and self._routine(exc_info)):
            super().error(msg, *args, exc_info=exc_info, **kw)

    def debug(self, msg: object, *args: object, exc_info: Any = None, **kw: Any) -> None:
        if not (exc_info and self._routine(exc_info)):
            super().debug(msg, *args, exc_info=exc_info, **kw)


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text; a read like any other (the Host check, and a token unless reads are open)."""
    try:
        api.authorize(request, "read")
    except api.ApiError as e:
        metrics.dropped("api", api.API_REASONS.get(e.status, "bad-request"))
        return error_json(e.status, e.message, e.headers)
    try:
        metrics.POWER_ACTIONS.counts = await asyncio.to_thread(request.app[CTX].store.power.counts)
    except Exception as e:  # a database that does not answer leaves the last counts, not a failed scrape
        log.warning("metrics: power counts not read: %s", str(e).splitlines()[0] if str(e) else e)
    workers = request.app.get(WORKER_METRICS)
    body = generate_latest(metrics.Merged(workers)) if workers else generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(config: Config, namespace: Namespace, booter: Booter, store: Store, events: EventLog,
             cluster: Cluster | None = None) -> web.Application:
    app = web.Application(client_max_size=config.api.max_body_kib << 10, middlewares=[api.error_middleware])
    app[CTX] = Ctx(config, namespace, booter, store, events, cluster,
                   tpm=TpmGate(config.security.tpm_enroll, store.tpms, store.secrets.derived_key,
                               measured=config.security.tpm_measured),
                   seeds=Seeds(config.scale.seed_fanout) if config.scale.seed else None)
    event_stream.install(app)
    api.add_routes(app)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/", status_page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/{tail:.*}", namespace_file)  # and HEAD
    return app


class HttpServer:
    def __init__(self, runner: web.AppRunner, port: int, https_port: int | None = None):
        self.runner = runner
        self.port = port
        self.https_port = https_port  # the TLS listener's port; None: none

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
    tls: ssl.SSLContext | None = None,
    https_port: int | None = None,
    ipv6: bool = False,
    reuse_port: bool = False,
    unix_path: str | None = None,
    app: web.Application | None = None,
) -> HttpServer:
    """Serve until `close()`. host None: `http.bind`; port None: `http.port` (0: any free port).
    `ipv6`: with the default bind, listen on IPv6 as well.

    With `tls`, the same application also listens with TLS on `https_port` (None:
    `http.https_port`; 0: any free port), so every route works over both.
    `reuse_port`: a worker's sockets, one of several on the port (server/workers.py).
    `unix_path`: the main process of several workers listens there only, for them.
    `app`: an application made already (a worker's); None: `make_app`.
    """
    app = app or make_app(config, namespace, booter, store, events, cluster)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, logger=RequestLog())
    await runner.setup()
    if unix_path is not None:
        site_unix = web.UnixSite(runner, unix_path)
        await site_unix.start()
        return HttpServer(runner, config.http.port, config.http.https_port if tls else None)
    bind = host or config.http.bind
    if ipv6 and bind == "0.0.0.0" and port != 0:
        # IPv6 too, on a socket of its own (asyncio sets IPV6_V6ONLY): IPv4 peers keep their
        # plain addresses, never `::ffff:` ones, so leases and the access rule still match.
        bind = ["0.0.0.0", "::"]  # type: ignore[assignment]
    site = web.TCPSite(runner, bind, config.http.port if port is None else port, reuse_address=True, backlog=4096,
                       reuse_port=reuse_port or None)
    secure = None
    if tls is not None:
        secure = web.TCPSite(runner, bind, config.http.https_port if https_port is None else https_port,
                             ssl_context=tls, reuse_address=True, backlog=4096, reuse_port=reuse_port or None)
    try:
        await site.start()
        if secure is not None:
            await secure.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.debug("http listening", extra={"host": bind, "port": bound})  # `serving on` says it, once all are up
    bound_tls = None
    if secure is not None:
        bound_tls = secure._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.debug("https listening", extra={"host": bind, "port": bound_tls})
    return HttpServer(runner, bound, bound_tls)
