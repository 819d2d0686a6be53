"""The namespace's files and scripts over HTTP, and the status page's static files.

Files go out with sendfile, Range, a strong ETag (the manifest's sha256 where
the image has one, else size and mtime), If-None-Match, If-Match, If-Range and
HEAD; what to answer is decided by `proto.http_conditional`. The RAW request
path is checked before aiohttp's decoding, so `%2e%2e`, `%2f` and backslashes
never reach the namespace; the namespace itself refuses `..`, absolute paths
and symlinks that leave the data directory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import IO

from aiohttp import web

from .. import metrics, names
from ..images.manifest import MODULES, ROOTFS, ManifestError
from ..names import PathRefused
from ..namespace import GeneratedFile
from ..overlays import OverlayError, sha256_line
from ..proto import http_conditional
from ..proto.pxe import Client
from ..tpm_gate import seal
from .http_context import CTX, Ctx, text_error
from .seeding import FALLBACK, FALLBACK_HEADER, SEED_PORT, Seeds

log = logging.getLogger("ramboot.http")

STATIC_DIR = Path(__file__).parent / "static"
# Only these names are served from STATIC_DIR: no path is ever joined from a request.
STATIC_FILES = {
    "status.css": "text/css",
    "status.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
_RAW_REFUSED = ("%2e", "%2f", "%5c", "%00", "\\")


def raw_refusal(raw_path: str) -> str | None:
    """Why the raw request path is refused, or None. Checked before any decoding."""
    path = raw_path.split("?", 1)[0]
    low = path.lower()
    if any(bad in low for bad in _RAW_REFUSED):
        return "encoded dot, slash, backslash or NUL in path"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "'.' or '..' segment in path"
    return None


async def _sendfile(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, f: IO[bytes], start: int,
                    count: int) -> None:
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
    sender = _FileSender(loop, socket.socket(sock.family, sock.type, fileno=fd), f.fileno(), start, count)
    try:
        sender.send()
        if not sender.done.done():
            loop.add_writer(fd, sender.send)
            try:
                await sender.done
            finally:
                loop.remove_writer(fd)
        sender.done.result()
    finally:
        sender.close()


class _FileSender:
    """sendfile(2) run from the loop's writer callback until the body is out; one future per body.

    Awaiting a future per send buffer's worth (about 1 MB) cost a task step
    through aiohttp's handler per wake-up, and a sendfile that only said EAGAIN.
    Here a wake-up is one callback and, usually, one sendfile: a short count
    means the send buffer is full, so we wait for the next writable event
    (level-triggered: if there is room after all, it comes at once).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, in_fd: int, offset: int, count: int):
        self.sock, self.in_fd, self.offset, self.left = sock, in_fd, offset, count
        self.done: asyncio.Future[None] = loop.create_future()
        self.raised = False

    def send(self) -> None:
        if self.done.done():
            return
        try:
            while self.left:
                want = min(self.left, 1 << 30)
                n = os.sendfile(self.sock.fileno(), self.in_fd, self.offset, want)
                if n == 0:
                    raise ConnectionResetError("file shrank while sending")
                self.offset += n
                self.left -= n
                if n < want:
                    if not self.raised:
                        self.raised = _SNDBUF.take(self.sock)
                    return
        except BlockingIOError:
            return
        except OSError as e:
            self.done.set_exception(e)
            return
        self.done.set_result(None)

    def close(self) -> None:
        """Give back the larger send buffer, and close our descriptor (the transport keeps its own)."""
        if self.raised:
            _SNDBUF.give_back(self.sock)
        self.sock.close()


class _SendBuffers:
    """A larger send buffer for clients that already have autotuning's largest, within a budget.

    Autotuning grows a socket's send buffer with its congestion window up to
    `tcp_wmem`'s maximum; a client that reaches it drains the buffer as fast as
    we fill it. For such a client SO_SNDBUF at `wmem_max` (the kernel doubles
    it) means fewer wake-ups and sendfile calls per GB, and on loopback fewer
    of the receiver's packets processed in our context. It also fixes the size
    (no shrinking under memory pressure), so it is taken only where it is larger
    than autotuning's maximum, for one body at a time (given back at its end),
    and only by as many bodies at once as fit in half of `tcp_mem`'s low
    threshold, so TCP memory never goes into pressure on our account (16 MB
    buffers for 100 clients on loopback did: sendfile calls fell to a few KB).
    A client with a small congestion window never takes one: the window keeps autotuning lower.
    """

    def __init__(self) -> None:
        self.size = self.budget = self.in_use = 0
        self.autotune_max = 0
        try:
            wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
            self.autotune_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            return
        if 2 * wmem_max > self.autotune_max:
            self.size = wmem_max
            self.budget = _tcp_mem_low() // 2 // (2 * wmem_max)

    def take(self, sock: socket.socket) -> bool:
        """True if `sock` now has the larger buffer (give it back when the body is done)."""
        if self.in_use >= self.budget:
            return False
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < self.autotune_max:
                return False
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.size)
        except OSError:
            return False
        self.in_use += 1
        return True

    def give_back(self, sock: socket.socket) -> None:
        """Back to autotuning's maximum (the kernel doubles what we ask), so an idle connection holds no more."""
        self.in_use -= 1
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.autotune_max // 2)
        except OSError:
            pass


def _tcp_mem_low() -> int:
    """`tcp_mem`'s low threshold in bytes; inside a network namespace it cannot be read, so the
    kernel's default is estimated: 3/64 of memory."""
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[0]) * page
    except (OSError, ValueError, IndexError):
        return os.sysconf("SC_PHYS_PAGES") * page * 3 // 64


_SNDBUF = _SendBuffers()


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
        modified = formatdate(st.st_mtime, usegmt=True)
        p = http_conditional.plan(request.headers, etag, size)
        if p.status == 304:
            return web.Response(status=304, headers={"ETag": etag, "Last-Modified": modified}), 0
        if p.status in (412, 416):
            if p.status == 416:
                metrics.dropped("http", "range-unsatisfiable")
            return web.Response(status=p.status, headers={"ETag": etag, **p.headers}), 0
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Last-Modified": modified, "Content-Type": content_type,
                   **p.headers}
        resp = web.StreamResponse(status=p.status, headers=headers)
        resp.content_length = p.count
        await resp.prepare(request)
        if request.method == "HEAD" or p.count == 0:
            await resp.write_eof()
            return resp, 0
        try:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
            try:
                await _sendfile(loop, transport, f, p.start, p.count)
            except NotImplementedError:  # e.g. TLS in front: copy in bounded chunks
                f.seek(p.start)
                left = p.count
                while left:
                    chunk = await loop.run_in_executor(None, f.read, min(left, 1 << 20))
                    if not chunk:
                        raise ConnectionResetError("file shrank while sending") from None
                    await resp.write(chunk)
                    left -= len(chunk)
            await resp.write_eof()
        except (ConnectionError, OSError) as e:
            # A client that leaves mid-file is routine (a PXE ROM aborting, a curl ^C): a counter
            # and a debug line, never a traceback. aiohttp sees a closed connection and drops it.
            metrics.dropped("http", "client-gone")
            log.debug("http: client left mid-file", extra={"path": request.path, "client": request.remote,
                                                           "why": f"{type(e).__name__}: {e}"})
            if request.transport is not None:
                request.transport.abort()
            return resp, 0
        return resp, p.count
    finally:
        f.close()


async def namespace_file(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    why = raw_refusal(request.raw_path)
    if why:
        metrics.dropped("http", "path-refused")
        return text_error(400, f"refused: {why}")
    name = request.path[1:]
    try:
        parsed = names.parse(name)
    except PathRefused as e:
        metrics.dropped("http", "path-refused")
        return text_error(400, f"refused: {e}")
    if isinstance(parsed, names.Overlay):
        return await overlay_file(request, parsed)
    try:
        resolved = await asyncio.to_thread(ctx.namespace.lookup, parsed, request.remote)
    except PathRefused as e:
        metrics.dropped("http", "path-refused")
        log.warning("path refused", extra={"path": name[:200], "client": request.remote, "why": str(e)[:200]})
        return text_error(403, f"refused: {e}")
    if resolved is None:
        metrics.dropped("http", "not-found")
        return text_error(404, f"not found: {name[:200]}")
    ip = request.remote or ""
    seeds = ctx.seeds if isinstance(parsed, names.ImageFile) and parsed.file in SEEDED else None
    if seeds is not None and isinstance(parsed, names.ImageFile) and seed_eligible(request, parsed):
        to = await seed_redirect(ctx, seeds, request, parsed)
        if to is not None:
            return web.Response(status=302, headers={"Location": to, "Cache-Control": "no-store"})
    t0 = time.monotonic()
    if isinstance(resolved, GeneratedFile):
        ca = resolved.kind == "ca"  # ca.cpio: the same bytes for every node, an archive
        generated = web.Response(body=resolved.data, content_type="application/octet-stream" if ca else "text/plain",
                                 headers={"Cache-Control": "no-store"})
        if request.method == "GET":
            metrics.HTTP_BYTES.labels("ca" if ca else "script").inc(len(resolved.data))
            ctx.events.served(ip, resolved.kind, name, resolved.mac, len(resolved.data), 0.0, "http")
        return generated
    sha_for = (functools.partial(ctx.catalog.file_sha256, parsed.image, parsed.file)
               if isinstance(parsed, names.ImageFile) else None)
    ctype = "application/toml" if name.endswith(".toml") else "application/octet-stream"
    if seeds is not None:
        seeds.serving += 1
    try:
        resp, sent = await send_file(request, resolved.path, ctype, sha_for)
    finally:
        if seeds is not None:
            seeds.serving -= 1
    if sent:
        metrics.HTTP_BYTES.labels(resolved.kind).inc(sent)
        ctx.events.served(ip, resolved.kind, name, None, sent, round(time.monotonic() - t0, 6), "http")
    return resp


SEEDED = (ROOTFS, MODULES)  # the files booted nodes serve to their peers
CHECK_TIMEOUT = 0.5  # seconds a seeding peer has to accept the server's connection before a redirect


async def _answers(ip: str) -> bool:
    """Does the peer accept a connection on its seeding port? A node that shut down (no ARP
    answer, or a reset) would otherwise cost each node sent to it a timeout first."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(ip, SEED_PORT), CHECK_TIMEOUT)
    except (OSError, TimeoutError):
        return False
    w.close()
    return True
SEED_WAIT = 5.0  # seconds a root download may wait for a free seeder (the initramfs probes with a 10 s timeout)


def seed_eligible(request: web.Request, f: names.ImageFile) -> bool:
    """Could a peer send this download? A root or modules GET or HEAD; a node's fall-back
    (`?seed=0`) and Range requests are always the server's."""
    return (f.file in SEEDED and request.method in ("GET", "HEAD") and request.query_string != FALLBACK
            and "Range" not in request.headers)


async def seed_redirect(ctx: Ctx, seeds: Seeds, request: web.Request, f: names.ImageFile) -> str | None:
    """A seeding peer's URL for this root (or modules) download (`seed_eligible`), if one is
    free; None: the server sends it. Reads only the client's address and FALLBACK_HEADER of
    `request` (a worker's question to the main process carries both).

    The server itself sends at most `seed_fanout` of these at a time: beyond that a request
    waits (up to SEED_WAIT seconds, inside the node's 10 s probe) for a peer's slot or the
    server's, so a storm grows a tree of seeders instead of splitting the server's link N ways."""
    try:
        m = ctx.catalog.manifest(f.image)
    except ManifestError:
        return None
    entry = m.files.get(f.file)
    if m.initramfs != "ramboot" and request.headers.get(FALLBACK_HEADER) != "1":
        # Only a client that checks a peer's bytes and falls back to the server gets a peer:
        # ramboot's initramfs, and ramboot's dracut module, which says so (a dracut image
        # built before it, stock livenet, would mount what a bad peer sent, or fail the boot).
        return None
    if entry is None:
        return None
    ip = request.remote or ""
    mac, group = ctx.events.mac_by_ip.get(ip), ctx.config.dhcp.group_of(ip)
    give_up = time.monotonic() + SEED_WAIT
    while True:
        peer = seeds.pick(mac, entry.sha256, group, time.time())
        if peer is not None and not await _answers(peer.ip):
            # Gone (shut down, or never reachable): skipped now, so no node waits on it.
            seeds.refuse(mac or "", peer.url(f.file), "the server's check found no listener")
            metrics.SEED_REFUSED.inc()
            ctx.events.record(peer.mac, "seed-skipped", by="server", reason=peer.refused)
            continue
        if peer is not None:
            metrics.SEED_REDIRECTS.inc()
            return peer.url(f.file)
        if seeds.serving < seeds.fanout or time.monotonic() >= give_up:
            return None
        await asyncio.sleep(0.1)


def _seeded_files(ctx: Ctx, mac: str) -> tuple[str, dict[str, str]] | None:
    """The image this server tells `mac` to boot and the sha256 of its seedable files (reads the store)."""
    d = ctx.booter.decide(Client(mac))
    if d is None:
        return None
    try:
        return d.image, {f: e.sha256 for f, e in ctx.catalog.manifest(d.image).files.items() if f in SEEDED}
    except ManifestError:
        return None


async def seed_report(ctx: Ctx, seeds: Seeds, mac: str, stage: str, detail: dict[str, object],
                      ip: str | None) -> None:
    """What a node's report means for seeding: a new boot stops its seeding, a verified root
    starts it (at the address the report came from, for the image this server told it to
    boot), a finished or refused download is counted against the peer it came from."""
    now = time.time()
    if stage in ("initramfs", "failed"):
        seeds.drop(mac)
    elif stage == "seeding" and ip:
        seeded = await asyncio.to_thread(_seeded_files, ctx, mac)  # the store, off the loop
        if seeded is None or not seeded[1].get(ROOTFS) or detail.get("sha256") != seeded[1][ROOTFS]:
            log.warning("seeding refused: not the root this server told it to boot", extra={"mac": mac})
            return
        seeds.offer(mac, ip, seeded[0], seeded[1], ctx.config.dhcp.group_of(ip), now)
    elif stage in ("download-done", "modules"):
        nbytes = detail.get("bytes")
        peer = seeds.done(mac, str(detail.get("url", "")), nbytes if isinstance(nbytes, int) else 0)
        if peer is not None:
            metrics.SEED_BYTES.inc(max(0, nbytes) if isinstance(nbytes, int) else 0)
            ctx.events.record(peer.mac, "seed-served", to=mac, bytes=nbytes, total_bytes=peer.served_bytes)
    elif stage == "seed-refused":
        peer = seeds.refuse(mac, str(detail.get("url", "")), str(detail.get("reason", "")))
        if peer is not None:
            metrics.SEED_REFUSED.inc()
            ctx.events.record(peer.mac, "seed-skipped", by=mac, reason=peer.refused)
    metrics.SEED_PEERS.set(sum(1 for p in seeds.peers.values() if not p.refused))


def node_credential(request: web.Request) -> str | None:
    """The boot's credential a node presents (`Authorization: Bearer`, from ramboot.token=)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def secrets_transport_refused(request: web.Request) -> str | None:
    """Why this request may not carry a node's secrets: plain HTTP, unless the operator allows it."""
    if request.secure or request.app[CTX].config.security.overlay_over_http:
        return None
    return "a node's overlay and reports go over HTTPS ([security] overlay_over_http = true allows HTTP)"


async def overlay_file(request: web.Request, name: names.Overlay) -> web.StreamResponse:
    """A node's rendered overlay (or its sha256), once per boot, to that node only (access.py):
    403 for anyone else, 409 and a `contested` event for a second claim on one boot."""
    ctx = request.app[CTX]
    ip = request.remote or ""
    why = secrets_transport_refused(request)
    if why:
        metrics.HTTP_REFUSED.labels("overlay").inc()
        return text_error(403, f"refused: {why}")
    access = ctx.namespace.access
    if access is None:
        return text_error(404, f"not found: {request.path[1:]}")
    claim = await asyncio.to_thread(access.claim, name.mac, ip, node_credential(request), name.checksum)
    if claim.contested and claim.credential is not None:
        rec = claim.credential
        log.warning("boot contested", extra={"mac": rec.node, "client": ip, "why": claim.why})
        metrics.BOOTS_CONTESTED.inc()
        ctx.events.record(rec.node, "contested", ip=ip, minted_to=rec.ip, claimed_by=rec.claimed_ip,
                          why=claim.why)
    if claim.status != 200 or claim.credential is None:
        log.warning("overlay refused", extra={"mac": name.mac, "client": ip, "why": claim.why})
        metrics.HTTP_REFUSED.labels("overlay").inc()
        if not claim.contested and await asyncio.to_thread(ctx.store.nodes.get, name.mac) is not None:
            # In the registered node's timeline (a note: it opens no boot); retention bounds it.
            ctx.events.record(name.mac, "refused", ip=ip, why=claim.why[:200])
        return text_error(claim.status, f"refused: {claim.why}")
    rec = claim.credential
    # A node with an enrolled TPM gets it sealed to the boot key only its TPM recovers (tpm_gate.py).
    key = await asyncio.to_thread(ctx.tpm.overlay_key, rec.node, rec.token_sha256) if ctx.tpm else None
    if key is not None and key.mode == "refused":
        metrics.HTTP_REFUSED.labels("overlay").inc()
        ctx.events.record(rec.node, "refused", ip=ip, why=key.why[:200])
        return text_error(403, f"refused: {key.why}")
    sealed = key is not None and key.mode == "sealed"
    try:
        resolved = await asyncio.to_thread(ctx.namespace.overlay, rec.nic, rec.uuid, rec.node,
                                           name.checksum and not sealed)
    except OverlayError as e:
        log.warning("overlay failed", extra={"mac": name.mac, "why": str(e)})
        return text_error(500, f"overlay: {e}")
    if resolved is None:
        return text_error(409, f"refused: {rec.nic} no longer boots as {rec.node}")
    data = resolved.data
    if key is not None and sealed:
        data = seal(key.key, data)
        if name.checksum:
            data = sha256_line(data, "overlay.tar")
    if not name.checksum:
        metrics.HTTP_BYTES.labels("overlay").inc(len(data))
    return web.Response(body=data, content_type="application/octet-stream", headers={"Cache-Control": "no-store"})


async def status_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})


async def favicon(request: web.Request) -> web.StreamResponse:
    """`/favicon.ico`, which browsers and tools ask for whatever the page names: the same icon."""
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    ctype = STATIC_FILES.get(name)
    if ctype is None:
        return text_error(404, f"not found: static/{name}")
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": f"{ctype}; charset=utf-8"})
