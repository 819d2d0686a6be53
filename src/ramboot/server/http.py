"""The HTTP server (aiohttp): the shared namespace's files and scripts, the REST
API, `/metrics` and the status page.

Files go out with sendfile, Range, a strong ETag (the manifest's sha256 where
the image has one, else size and mtime), If-None-Match, If-Match, If-Range and
HEAD. The RAW request path is checked before aiohttp's decoding, so `%2e%2e`,
`%2f` and backslashes never reach the namespace; the namespace itself refuses
`..`, absolute paths and symlinks that leave the data directory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics
from ..config import Config
from ..images.manifest import ManifestError
from ..inventory.store import Store
from ..namespace import STAGE_OF_KIND, GeneratedFile, Namespace, PathRefused, split_request
from ..policy import Booter
from .events import EventLog

log = logging.getLogger("ramboot.http")

STATIC_DIR = Path(__file__).parent / "static"
# Only these names are served from STATIC_DIR: no path is ever joined from a request.
STATIC_FILES = {
    "status.css": "text/css",
    "status.js": "text/javascript",
}
_RAW_REFUSED = ("%2e", "%2f", "%5c", "%00", "\\")


@dataclass
class Ctx:
    """Everything a handler needs; one per application."""

    config: Config
    namespace: Namespace
    booter: Booter
    store: Store
    events: EventLog

    def manifest_sha(self, image: str, fname: str, size: int) -> str | None:
        """The manifest's sha256 for a file, if the manifest lists it at this size."""
        try:
            entry = self.booter.manifest(image).files.get(fname)
        except ManifestError:
            return None
        return entry.sha256 if entry is not None and entry.size == size else None


CTX = web.AppKey("ramboot", Ctx)


def text_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


def raw_refusal(raw_path: str) -> str | None:
    """Why the raw request path is refused, or None. Checked before any decoding."""
    path = raw_path.split("?", 1)[0]
    low = path.lower()
    if any(bad in low for bad in _RAW_REFUSED):
        return "encoded dot, slash, backslash or NUL in path"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "'.' or '..' segment in path"
    return None


# -- conditional and range requests ----------------------------------------
class _Unsatisfiable(Exception):
    pass


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as (first, last) inclusive; None means serve it all.

    Raises _Unsatisfiable for a well-formed range past the end (416). Several
    ranges or a malformed header are ignored, as RFC 9110 §14.2 allows.
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(int(last) if last else size - 1, size - 1)


def etag_matches(etag: str, header: str, weak: bool) -> bool:
    """RFC 9110 §8.8.3.2: weak comparison for If-None-Match, strong for If-Match/If-Range."""
    header = header.strip()
    if header == "*":
        return True
    for tag in (t.strip() for t in header.split(",")):
        if tag.startswith("W/"):
            if weak and tag[2:] == etag:
                return True
        elif tag == etag:
            return True
    return False


async def _sendfile(loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport, f, start: int, count: int) -> None:
    """sendfile(2) from `f` to the client: no copy through Python, no buffer per client.

    asyncio's own loop has `loop.sendfile`; uvloop raises NotImplementedError
    for it, and the copying fallback then costs ~3 MB of buffers and CPU per
    client. So on such loops we run the non-blocking sendfile ourselves, on a
    dup of the socket's descriptor (uvloop refuses add_writer on a descriptor
    one of its transports owns). TLS cannot use sendfile: NotImplementedError.
    """
    try:
        await loop.sendfile(transport, f, start, count)
        return
    except NotImplementedError:
        pass
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None:
        raise NotImplementedError("no plain socket under this transport")
    while transport.get_write_buffer_size():  # the headers go out first
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0.001)
    fd = os.dup(sock.fileno())
    try:
        offset, left = start, count
        while left:
            try:
                n = os.sendfile(fd, f.fileno(), offset, min(left, 1 << 30))
            except (BlockingIOError, InterruptedError):
                writable = loop.create_future()
                loop.add_writer(fd, lambda: writable.done() or writable.set_result(None))
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)
                continue
            if n == 0:
                raise ConnectionResetError("file shrank while sending")
            offset += n
            left -= n
    finally:
        os.close(fd)


async def send_file(request: web.Request, path: Path, content_type: str,
                    sha_for: Callable[[int], str | None] | None = None) -> tuple[web.StreamResponse, int]:
    """Serve one regular file with sendfile; returns the response and the body bytes sent.

    `sha_for(size)` gives the file's sha256 for a strong ETag (the manifest's), or None.
    """
    loop = asyncio.get_running_loop()
    f = open(path, "rb")  # noqa: SIM115 - closed in finally, after sendfile
    try:
        st = os.fstat(f.fileno())
        size = st.st_size
        etag_sha = sha_for(size) if sha_for is not None else None
        etag = f'"{etag_sha}"' if etag_sha else f'"{size:x}-{st.st_mtime_ns:x}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Content-Type": content_type,
        }
        if (im := request.headers.get("If-Match")) is not None and not etag_matches(etag, im, weak=False):
            return web.Response(status=412, headers={"ETag": etag}), 0
        if (inm := request.headers.get("If-None-Match")) is not None and etag_matches(etag, inm, weak=True):
            return web.Response(status=304, headers={"ETag": etag, "Last-Modified": headers["Last-Modified"]}), 0
        start, count, status = 0, size, 200
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng and (if_range is None or etag_matches(etag, if_range, weak=False)):
            try:
                r = parse_range(rng, size)
            except _Unsatisfiable:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}", "ETag": etag}), 0
            if r is not None:
                start, count, status = r[0], r[1] - r[0] + 1, 206
                headers["Content-Range"] = f"bytes {r[0]}-{r[1]}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = count
        await resp.prepare(request)
        if request.method == "HEAD" or count == 0:
            await resp.write_eof()
            return resp, 0
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        try:
            await _sendfile(loop, transport, f, start, count)
        except NotImplementedError:  # e.g. TLS in front: copy in bounded chunks
            f.seek(start)
            left = count
            while left:
                chunk = await loop.run_in_executor(None, f.read, min(left, 1 << 20))
                if not chunk:
                    raise ConnectionResetError("file shrank while sending")
                await resp.write(chunk)
                left -= len(chunk)
        await resp.write_eof()
        return resp, count
    finally:
        f.close()


# -- the namespace ---------------------------------------------------------
async def namespace_file(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    why = raw_refusal(request.raw_path)
    if why:
        return text_error(400, f"refused: {why}")
    name = request.path[1:]
    try:
        parts = split_request(name)
    except PathRefused as e:
        return text_error(400, f"refused: {e}")
    try:
        resolved = await asyncio.to_thread(ctx.namespace.resolve, name)
    except PathRefused as e:
        log.warning("path refused", extra={"path": name, "client": request.remote, "why": str(e)})
        return text_error(403, f"refused: {e}")
    if resolved is None:
        return text_error(404, f"not found: {name}")
    ip = request.remote or ""
    t0 = time.monotonic()
    if isinstance(resolved, GeneratedFile):
        resp = web.Response(body=resolved.data, content_type="text/plain", headers={"Cache-Control": "no-store"})
        if request.method == "GET":
            metrics.HTTP_BYTES.labels("script").inc(len(resolved.data))
            if resolved.mac:
                ctx.events.mac_by_ip.setdefault(ip, resolved.mac)
                ctx.events.record(resolved.mac, "script", file=name, bytes=len(resolved.data))
            else:
                ctx.events.record_by_ip(ip, "script", file=name, bytes=len(resolved.data))
        return resp
    sha_for = functools.partial(ctx.manifest_sha, parts[1], parts[2]) if parts[0] == "images" else None
    ctype = "application/toml" if name.endswith(".toml") else "application/octet-stream"
    resp, sent = await send_file(request, resolved.path, ctype, sha_for)
    if sent:
        seconds = round(time.monotonic() - t0, 6)
        metrics.HTTP_BYTES.labels(resolved.kind).inc(sent)
        stage = STAGE_OF_KIND.get(resolved.kind)
        if stage:
            ctx.events.record_by_ip(ip, stage, file=name, bytes=sent, seconds=seconds, protocol="http")
    return resp


# -- metrics and the status page -------------------------------------------
async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    ctype = STATIC_FILES.get(name)
    if ctype is None:
        return text_error(404, f"not found: static/{name}")
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": f"{ctype}; charset=utf-8"})


def make_app(config: Config, namespace: Namespace, booter: Booter, store: Store, events: EventLog) -> web.Application:
    from . import api  # the REST API and the live event stream

    app = web.Application(client_max_size=1 << 20, middlewares=[api.error_middleware])
    app[CTX] = Ctx(config, namespace, booter, store, events)
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
) -> HttpServer:
    """Serve until `close()`. host None: `http.bind`; port None: `http.port` (0: any free port)."""
    app = make_app(config, namespace, booter, store, events)
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
