"""`serve` on every core: worker processes serve HTTP and TFTP, the main process keeps the rest.

With `[serve] workers = N` (N > 1) the main process holds DHCP (v4 and v6, the
leases, their journal), the router advertisements, the cluster registration,
the API, the status page, `/metrics` and the live feed, and listens only on a
unix socket in a private directory. N worker processes (`python -m
ramboot.server.worker_main`) each bind the public HTTP, HTTPS and TFTP ports with
SO_REUSEPORT, so the kernel spreads connections and RRQs over them; a TFTP
transfer's own socket stays in the worker that took its RRQ.

A worker serves files itself: loaders, kernels, initrds, images (sendfile).
Whatever needs the main process's state goes there over the unix socket:
- generated names (iPXE scripts, pxelinux and GRUB configs) are decided in the
  worker, after `POST /_worker/checkpoint`: the main process's DHCP server
  appends leases to its journal first, and the table takes them on that call,
  so the access rule reads every lease committed before the request;
- a seedable root download (`[scale] seed`): the main process, which holds the
  seeders and the server's fan-out, says where it goes (`POST /_worker/seed`):
  to a peer (the worker answers the redirect) or here, on one of the server's
  slots, which the worker gives back when the body is out (`/_worker/seed-done`;
  a worker that exits gives back all of its own). The bytes never go through
  the main process: proxied, they were copied through two Pythons, 7x nginx's
  CPU per GB (docs/benchmarks.md, "HTTP: CPU per GB");
- everything else on the HTTP port (the API, `/`, `/metrics`, the event stream,
  overlays): proxied as it is, with the client's address and scheme in two
  headers the main process alone trusts;
- events and metrics: batched to `POST /_worker/report` every EVERY seconds;
  the main process records them as its own (its EventLog names an address by
  the lease), and `/metrics` adds each worker's samples with a `worker` label.

The main process restarts a worker that exits (one crash never stops the
server) and stops them all on SIGTERM/SIGINT. docs/decisions.md, "Workers".
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
import zlib
from typing import Any, Literal

import aiohttp
from aiohttp import web

from .. import metrics, names
from ..config import Config
from ..namespace import Namespace, PathRefused, Resolved
from .cluster import Cluster
from .events import EventLog
from .http_context import CTX
from .http_files import namespace_file, seed_eligible, seed_redirect
from .http_server import WORKER_METRICS
from .seeding import FALLBACK_HEADER

log = logging.getLogger("ramboot.workers")

PEER, SCHEME, KEY = "X-Ramboot-Peer", "X-Ramboot-Scheme", "X-Ramboot-Worker-Key"
WORKER = "X-Ramboot-Worker"
INTERNAL = "/_worker/"
EVERY = 0.5  # seconds between a worker's reports (events, metrics)
READY_TIMEOUT = 60.0  # seconds a worker has to bind its sockets at start
RESTART_DELAY = (0.2, 5.0)  # first and longest wait before a crashed worker starts again
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
                  "proxy-authorization", "proxy-authenticate", "host", PEER.lower(), SCHEME.lower(), KEY.lower()})


# ------------------------------------------------------------------ main process

def probe_ports(config: Config, ipv4: bool, ipv6: bool, tls: bool) -> None:
    """Each public port is free, tried with a plain bind (no SO_REUSEPORT) before any worker
    binds it: a process of the same user holding it with SO_REUSEPORT (a second `serve`) would
    otherwise be joined silently and take half the requests. OSError names the port."""
    http_hosts = [config.http.bind] + (["::"] if ipv6 and config.http.bind == "0.0.0.0" else [])
    checks = [(f"http port {config.http.port}", socket.SOCK_STREAM, h, config.http.port) for h in http_hosts]
    if tls:
        checks += [(f"https port {config.http.https_port}", socket.SOCK_STREAM, h, config.http.https_port)
                   for h in http_hosts]
    checks += [(f"tftp port {config.tftp.port}", socket.SOCK_DGRAM, h, config.tftp.port)
               for h, on in (("0.0.0.0", ipv4), ("::", ipv6)) if on]
    for what, kind, host, port in checks:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT is no holder
            if ":" in host:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise OSError(f"{what}: {os.strerror(e.errno) if e.errno else e}") from None


class WorkerPool:
    """The N worker processes of one `serve`: started, watched, restarted, stopped."""

    def __init__(self, config: Config, count: int):
        self.config = config
        self.count = count
        self.dir = tempfile.mkdtemp(prefix="ramboot-workers-")  # 0700: only this user reaches the socket
        self.socket_path = os.path.join(self.dir, "main.sock")
        self.key = secrets.token_hex(16)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.metrics: dict[str, str] = {}
        self.slots: dict[str, int] = {}  # the server's seeding slots each worker holds (`_seed`)
        self.app: web.Application | None = None
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._stopping = False

    def install(self, app: web.Application) -> None:
        """The main process's application: trust the workers' headers, answer their calls."""
        app.middlewares.insert(0, _from_worker)
        app[WORKER_METRICS] = self.metrics
        self.app = app
        app.router.add_post(INTERNAL + "checkpoint", self._checkpoint)
        app.router.add_post(INTERNAL + "report", self._report)
        app.router.add_post(INTERNAL + "seed", self._seed)
        app.router.add_post(INTERNAL + "seed-done", self._seed_done)

    def _argv(self, index: int) -> list[str]:
        verbose = ["-v"] if logging.getLogger().isEnabledFor(logging.DEBUG) else []
        return [sys.executable, "-m", "ramboot.server.worker_main", str(index), self.socket_path, *verbose]

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        """One worker, bound and ready (its first stdout line), or OSError."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(index), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True)  # ^C reaches the main process only, which stops the workers in order
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"config": self.config.model_dump(mode="json"), "key": self.key,
                                     "parent": os.getpid(), "workers": self.count}).encode())
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if line.startswith(b"error "):
                raise OSError(line[6:].decode(errors="replace").strip())
            raise OSError(f"worker {index} did not start (exit status {proc.returncode}; its log says why)")
        return proc

    async def start(self) -> None:
        """All N at once (each takes a second or more to import and bind); one that fails stops the rest."""
        got = await asyncio.gather(*(self._spawn(i) for i in range(self.count)), return_exceptions=True)
        for i, proc in enumerate(got):
            if isinstance(proc, asyncio.subprocess.Process):
                self.procs[i] = proc
        failed = next((e for e in got if isinstance(e, BaseException)), None)
        if failed is not None:
            await self.close()
            raise failed
        for i in range(self.count):
            self._watchers[i] = asyncio.get_running_loop().create_task(self._watch(i))
        log.info("workers: %d serving HTTP and TFTP (pids %s)", self.count,
                 ", ".join(str(p.pid) for p in self.procs.values()))

    async def _watch(self, index: int) -> None:
        delay = RESTART_DELAY[0]
        while True:
            proc = self.procs[index]
            started = time.monotonic()
            code = await proc.wait()
            if self._stopping:
                return
            self.metrics.pop(str(index), None)
            self._give_back(str(index), self.slots.get(str(index), 0))
            log.warning("workers: worker %d (pid %d) exited with status %s; starting it again", index, proc.pid, code)
            delay = RESTART_DELAY[0] if time.monotonic() - started > 30 else min(delay * 2, RESTART_DELAY[1])
            while not self._stopping:
                await asyncio.sleep(delay)
                try:
                    self.procs[index] = await self._spawn(index)
                    log.info("workers: worker %d is pid %d", index, self.procs[index].pid)
                    break
                except OSError as e:
                    log.warning("workers: %s; again in %.1f s", e, delay)
                    delay = min(delay * 2, RESTART_DELAY[1])

    async def close(self) -> None:
        self._stopping = True
        for t in self._watchers.values():
            t.cancel()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)

    def _trusted(self, request: web.Request) -> None:
        if not secrets.compare_digest(request.headers.get(KEY, ""), self.key):
            raise web.HTTPNotFound()

    async def _checkpoint(self, request: web.Request) -> web.Response:
        """The leases table takes what the lease journal holds, before a worker reads it: a worker's
        script decision then sees every lease committed (and ACKed) before it asked, as this process would."""
        self._trusted(request)
        await asyncio.to_thread(request.app[CTX].store.leases.checkpoint)
        return web.Response(status=204)

    async def _report(self, request: web.Request) -> web.Response:
        """A worker's events since its last report, recorded as this server's own; its metrics."""
        self._trusted(request)
        body = await request.json()
        events: EventLog = request.app[CTX].events
        worker = str(body.get("worker"))
        for op, args in body.get("events", ()):
            if op == "served":
                events.served(*args)
                metrics.WORKER_SERVED.labels(worker, args[-1]).inc()
            elif op == "add":
                events.add(*args)
            elif op == "bind":
                events.bind(*args)
        if isinstance(body.get("metrics"), str):
            self.metrics[worker] = body["metrics"]
        return web.Response(status=204)


    async def _seed(self, request: web.Request) -> web.Response:
        """Where a worker's seedable download goes: `{"to": URL}` a peer's, or `{"to": null}` the
        worker sends it, on one of the server's `seed_fanout` slots (`"slot": true`) it gives back."""
        self._trusted(request)
        ctx = request.app[CTX]
        parsed = names.parse(str((await request.json()).get("name", "")))
        if ctx.seeds is None or not isinstance(parsed, names.ImageFile):
            return web.json_response({"to": None, "slot": False})
        to = await seed_redirect(ctx, ctx.seeds, request, parsed)
        if to is not None:
            return web.json_response({"to": to, "slot": False})
        worker = request.headers.get(WORKER, "")
        ctx.seeds.serving += 1
        self.slots[worker] = self.slots.get(worker, 0) + 1
        return web.json_response({"to": None, "slot": True})

    async def _seed_done(self, request: web.Request) -> web.Response:
        self._trusted(request)
        self._give_back(request.headers.get(WORKER, ""), 1)
        return web.Response(status=204)

    def _give_back(self, worker: str, n: int) -> None:
        """`n` of the seeding slots `worker` holds back to the server (never more than it holds)."""
        n = min(n, self.slots.get(worker, 0))
        if not n:
            return
        self.slots[worker] -= n
        seeds = self.app[CTX].seeds if self.app is not None else None
        if seeds is not None:
            seeds.serving -= n


@web.middleware
async def _from_worker(request: web.Request, handler: Any) -> web.StreamResponse:
    """Requests come from the workers, over the private socket: the client is the one they name."""
    peer = request.headers.get(PEER)
    if peer:
        request = request.clone(remote=peer, scheme=request.headers.get(SCHEME, "http"))
    return await handler(request)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ worker process

class _UnixHttp(http.client.HTTPConnection):
    """A plain HTTP connection to the main process's socket (the checkpoint calls, from threads)."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class CurrentNamespace(Namespace):
    """The worker's namespace: a generated name is decided here, over the leases table once the
    main process has brought it up to date (its DHCP server appends to the lease journal first)."""

    def __init__(self, local: Namespace, socket_path: str, key: str):  # noqa: D107
        self.__dict__.update(local.__dict__)
        self.socket_path, self.key = socket_path, key

    def lookup(self, name: names.Name | None, requester: str | None = None) -> Resolved | None:
        if isinstance(name, names.Script | names.PxelinuxConfig | names.GrubConfig):
            conn = _UnixHttp(self.socket_path)
            try:
                conn.request("POST", INTERNAL + "checkpoint", headers={KEY: self.key})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 204:
                    raise OSError(f"main process answered {resp.status} to a checkpoint")
            finally:
                conn.close()
        return super().lookup(name, requester)


class ForwardingEvents(EventLog):
    """The worker's event log: every call goes to the main process's, in batches."""

    def __init__(self, session: aiohttp.ClientSession, index: int, key: str):
        super().__init__(sink=None, server=None)  # type: ignore[arg-type]
        self.session, self.index, self.key = session, index, key
        self._calls: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, mac: str, stage: str, detail: dict, source: str = "server") -> None:  # type: ignore[type-arg]
        self._calls.append(("add", (mac, stage, detail, source)))

    def bind(self, ip: str, mac: str, lease: bool = False) -> None:
        self._calls.append(("bind", (ip, mac, lease)))

    def served(self, ip: str, kind: str, name: str, mac: str | None, nbytes: int, seconds: float,
               protocol: str) -> None:
        self._calls.append(("served", (ip, kind, name, mac, nbytes, seconds, protocol)))

    async def send(self) -> None:
        calls, self._calls = self._calls, []
        body = {"worker": self.index, "events": calls, "metrics": metrics.exposition()}
        try:
            async with self.session.post("http://main" + INTERNAL + "report", json=body,
                                         headers={KEY: self.key}) as r:
                r.raise_for_status()
        except (aiohttp.ClientError, OSError) as e:
            self._calls[:0] = calls[-10_000:]
            log.warning("worker %d: report not taken (%s); kept for the next", self.index, e)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(EVERY)
            await self.send()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.send()


class Follower(Cluster):
    """The cluster as the worker sees it: the main process's registration, read from the store."""

    async def start(self) -> None:
        self.listener = None
        await asyncio.to_thread(self._follow_once)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def _follow_once(self) -> None:
        cutoff = time.time() - self.config.cluster.dead_after
        records = self.store.servers.all()
        mine = next((r for r in records if r.name == self.name), None)
        self.held = mine.images if mine else {}
        self.peers = sorted((r for r in records if r.name != self.name and r.last_seen >= cutoff),
                            key=lambda r: zlib.crc32(r.name.encode()))

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.config.cluster.heartbeat)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._follow_once)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _where(request: web.Request, seeding: bool) -> Literal["here", "main", "ask"]:
    """Who answers this request: the worker (the files it serves), the main process (everything
    else), or the worker once the main process said no peer takes it (a seedable download)."""
    if request.path.startswith(INTERNAL):
        return "here"  # never reachable from outside: the worker answers 404 itself
    if request.match_info.route.handler is not namespace_file:
        return "main"
    try:
        parsed = names.parse(request.match_info.get("tail", ""))
    except PathRefused:
        return "here"
    if isinstance(parsed, names.Overlay):
        return "main"
    return "ask" if seeding and isinstance(parsed, names.ImageFile) and seed_eligible(request, parsed) else "here"


def proxy_middleware(session: aiohttp.ClientSession, seeding: bool, key: str, index: int) -> Any:
    releases: set[asyncio.Task[None]] = set()

    async def release() -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.post("http://main" + INTERNAL + "seed-done", headers={KEY: key, WORKER: str(index)}):
                pass

    @web.middleware
    async def to_main(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(INTERNAL):
            raise web.HTTPNotFound()
        where = _where(request, seeding)
        if where == "here":
            return await handler(request)  # type: ignore[no-any-return]
        if where == "ask":
            headers = {KEY: key, WORKER: str(index), PEER: request.remote or "", SCHEME: request.scheme}
            if FALLBACK_HEADER in request.headers:
                headers[FALLBACK_HEADER] = request.headers[FALLBACK_HEADER]
            try:
                async with session.post("http://main" + INTERNAL + "seed", headers=headers,
                                        json={"name": request.match_info.get("tail", "")}) as r:
                    r.raise_for_status()
                    said = await r.json()
            except (aiohttp.ClientError, OSError, ValueError):
                return web.Response(status=503, text="the main process does not answer\n")
            if said.get("to"):
                return web.Response(status=302, headers={"Location": str(said["to"]), "Cache-Control": "no-store"})
            try:
                return await handler(request)  # type: ignore[no-any-return]
            finally:
                if said.get("slot"):  # given back in a task of its own: a cancelled handler still gives it
                    task = asyncio.get_running_loop().create_task(release())
                    releases.add(task)
                    task.add_done_callback(releases.discard)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.host
        headers[PEER], headers[SCHEME] = request.remote or "", request.scheme
        body = await request.read() if request.can_read_body else None
        try:
            upstream = await session.request(request.method, "http://main" + request.path_qs, headers=headers,
                                             data=body, allow_redirects=False)
        except (aiohttp.ClientError, OSError):
            return web.Response(status=503, text="the main process does not answer\n")
        async with upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
        return resp

    return to_main


def share_caps(config: Config, workers: int) -> Config:
    """One worker's share of TFTP's ring memory (`max_memory_mib`, 1/N each), so N workers
    together hold what one process would. The counts (`max_transfers`, `max_unconfirmed`,
    `max_per_source`) stay per worker: the kernel's hash spreads a burst unevenly, and an
    exact 1/N share refused RRQs a single process took (1,000 clients at a cap of 1,000:
    126 TFTP retries); what a count costs is ring memory, and that is bounded."""
    t = config.tftp
    share = t.model_copy(update={"max_memory_mib": max(1, t.max_memory_mib // workers)})
    return config.model_copy(update={"tftp": share})
