"""The link bound: raw TCP over the same veth into the generator processes, nothing checked.

`blast()` runs in the server's namespace and sends a file over and over with sendfile;
`measure_bound()` runs in a generator process and counts what arrives."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

from .common import BLAST_PORT
from .http_client import HttpConn


class _Sink(asyncio.BufferedProtocol):
    """Counts what arrives, received into the generator's shared buffer like an HTTP body."""

    def __init__(self, total: list[int]):
        self.total = total
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return HttpConn.view

    def buffer_updated(self, n: int) -> None:
        self.total[0] += n

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def measure_bound(server: str, seconds: float = 2.0, conns: int = 4) -> float:
    """MB/s from the blaster over the veth into one generator process (recv_into, no compare)."""
    loop = asyncio.get_running_loop()
    total = [0]
    t0 = time.monotonic()
    sinks = [(await loop.create_connection(lambda: _Sink(total), server, BLAST_PORT)) for _ in range(conns)]
    await asyncio.sleep(seconds)
    for transport, _ in sinks:
        transport.close()
    return total[0] / 2**20 / (time.monotonic() - t0)


def blast(path: str) -> None:
    """The link-bound helper: serve `path` over and over with sendfile to whoever connects."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", BLAST_PORT))
    srv.listen(64)
    size = os.path.getsize(path)

    def serve(c: socket.socket) -> None:
        with c, open(path, "rb") as f:
            try:
                while True:
                    off = 0
                    while off < size:
                        off += os.sendfile(c.fileno(), f.fileno(), off, size - off)
            except OSError:
                pass

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

