"""The HTTP load client: iPXE's and the initramfs's downloads, compared with the files in place."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import SplitResult, urlsplit

from .common import ClientResult, Failed

# A client's report to the server's events API: (stage, detail).
Report = Callable[[str, dict[str, object]], Awaitable[None]]


class HttpConn(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection from one client's leased address.

    Bodies are received with recv_into into one buffer shared by the whole process
    (the loop calls get_buffer, recv_into and buffer_updated back to back, so one
    buffer is enough) and compared there, in place, with the reference bytes: no
    allocation, copy or hash per chunk.
    """

    buf = bytearray(1 << 20)
    view = memoryview(buf)

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.done: asyncio.Future[None] | None = None
        # the response under way
        self.head = bytearray()
        self.length = -1
        self.got = 0
        self.body = bytearray()
        self.ref: memoryview | None = None
        self.status = 0
        self.keep = True
        self.location = ""

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None, "used before connection_made"
        return self._transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's do not subclass asyncio.Transport, so no isinstance)
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the server closed the connection mid-response"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, n: int) -> None:
        if self.done is None or self.done.done():
            return
        if self.length >= 0:
            self._body(self.buf, 0, n)
            return
        self.head += self.view[:n]
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 65536:
                self._fail(Failed("http: response header over 64 KiB"))
            return
        if self._header(bytes(self.head[:end])):
            self._body(self.head, end + 4, len(self.head) - end - 4)

    def _header(self, raw: bytes) -> bool:
        lines = raw.decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail(Failed(f"http: bad status line {lines[0][:80]!r}"))
            return False
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" not in headers:
            self._fail(Failed("http: response without Content-Length"))
            return False
        self.length = int(headers["content-length"])
        self.keep = headers.get("connection", "").lower() != "close"
        self.location = headers.get("location", "")
        if self.status != 200:
            self.ref = None  # an error page: keep it for the message
        elif self.ref is not None and self.length != len(self.ref):
            self._fail(Failed(f"http: Content-Length {self.length}, the file has {len(self.ref)} bytes"))
            return False
        return True

    def _body(self, data: bytearray, start: int, n: int) -> None:
        got = self.got
        if got + n > self.length:
            self._fail(Failed("http: more bytes than Content-Length"))
            return
        if self.ref is None:
            self.body += data[start:start + n]
        elif not data.startswith(self.ref[got:got + n], start, start + n):  # a memcmp
            self._fail(Failed(f"http: the body differs from the file within bytes {got}-{got + n}"))
            return
        self.got = got + n
        if self.got == self.length and self.done is not None:
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
            if self._transport is not None:
                self._transport.close()

    async def request(self, method: str, url: SplitResult, body: bytes,
                      ref: memoryview | None) -> tuple[int, bytes, int]:
        """(status, body or b"" when compared with `ref`, body length)."""
        if self.transport.is_closing():  # the server went away since the last response
            raise ConnectionResetError("the server closed the connection")
        self.head, self.length, self.got, self.body, self.ref = bytearray(), -1, 0, bytearray(), ref
        self.done = asyncio.get_running_loop().create_future()
        ctype = "Content-Type: application/json\r\n" if body else ""
        path = url.path + (f"?{url.query}" if url.query else "")
        self.transport.write(f"{method} {path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n{ctype}"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.done
        return self.status, bytes(self.body), self.got


class HttpClient:
    """A client's HTTP: one keep-alive connection per server, from its leased address."""

    def __init__(self, local_ip: str, timeout: float, res: ClientResult):
        self.ip, self.timeout, self.res = local_ip, timeout, res
        self.conns: dict[str, HttpConn] = {}
        self.location = ""  # the last response's Location (a redirect to a seeding peer)

    async def fetch(self, url: str, ref: memoryview | None = None, method: str = "GET",
                    body: bytes = b"") -> tuple[int, bytes]:
        u = urlsplit(url)
        old = self.conns.get(u.netloc)
        if old is None or old.closed or old.transport.is_closing():
            if not u.hostname:
                raise Failed(f"http: no host in {url!r}")
            loop = asyncio.get_running_loop()
            _, conn = await asyncio.wait_for(
                loop.create_connection(HttpConn, u.hostname, u.port or 80, local_addr=(self.ip, 0)), 10)
            self.conns[u.netloc] = conn
        else:
            conn = old
        try:
            status, data, n = await asyncio.wait_for(conn.request(method, u, body, ref), self.timeout)
        except BaseException:
            self.conns.pop(u.netloc, None)
            conn.transport.close()
            raise
        self.res.bytes += n
        self.location = conn.location
        if not conn.keep:
            self.conns.pop(u.netloc, None)
            conn.transport.close()
        return status, data

    def close(self) -> None:
        for c in self.conns.values():
            c.transport.close()

async def get_any(http: HttpClient, urls: list[str], ref: memoryview, what: str) -> None:
    """The first of `urls` that serves exactly the reference bytes (iPXE's `||`, the initramfs's list)."""
    errors: list[str] = []
    for url in urls:
        try:
            status, body = await http.fetch(url, ref)
            if status == 200:
                return
            errors.append(f"{url}: status {status} {body[:80]!r}")
        except (Failed, OSError, TimeoutError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}"[:160])
    raise Failed(f"http: {what}: every URL failed: {'; '.join(errors)}")


async def get_root(http: HttpClient, urls: list[str], ref: memoryview, report: Report) -> None:
    """The initramfs's root download with seeding: a redirect to a peer is followed; a peer
    that fails or sends other bytes is reported (`seed-refused`) and the server asked again,
    itself (`?seed=0`); the download is reported (`download-done`), which frees the peer's slot."""
    errors: list[str] = []
    for url in urls:
        try:
            status, body = await http.fetch(url, ref)
            got = url
            if status == 302 and http.location:
                peer = http.location
                try:
                    status, body = await http.fetch(peer, ref)
                    got = peer
                except (Failed, OSError, TimeoutError) as e:
                    status, body = 0, str(e)[:100].encode()
                if status != 200:
                    await report("seed-refused", {"url": peer, "reason": body[:100].decode(errors="replace")})
                    got = url + "?seed=0"
                    status, body = await http.fetch(got, ref)
            if status == 200:
                await report("download-done", {"url": got, "bytes": len(ref)})
                return
            errors.append(f"{url}: status {status} {body[:80]!r}")
        except (Failed, OSError, TimeoutError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}"[:160])
    raise Failed(f"http: rootfs: every URL failed: {'; '.join(errors)}")

