"""A booted client seeds its peers: it serves its verified root from its leased address,
as a node does ([scale] seed); the generator process keeps serving until its peers are done."""

from __future__ import annotations

import asyncio
import mmap
import time

from .common import SEED_PORT

_SEEDS: list[asyncio.Server] = []  # this process's seeding clients
_SEED_SEEN = [0.0]  # when a seeding client last got a request


async def start_seeding(ip: str, path: str) -> None:
    """Serve the root image from `ip`:SEED_PORT as a booted node does (its RAM copy: here the
    file the generator already checked, mapped); only GET/HEAD of /images/bench/rootfs.squashfs."""
    with open(path, "rb") as f:
        data = memoryview(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
    size = len(data)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                _SEED_SEEN[0] = time.monotonic()
                method, target = head.split(b" ", 2)[:2]
                if target.split(b"?")[0] != b"/images/bench/rootfs.squashfs":
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
                if method == b"GET":
                    for i in range(0, size, 1 << 20):
                        writer.write(data[i:i + (1 << 20)])
                        await writer.drain()
                _SEED_SEEN[0] = time.monotonic()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    _SEEDS.append(await asyncio.start_server(handle, ip, SEED_PORT, backlog=64))



async def linger(quiet: float = 3.0) -> None:
    """Keep this process's seeding clients serving until nobody asked for `quiet` seconds
    (the other generators' clients may still be downloading from them)."""
    _SEED_SEEN[0] = max(_SEED_SEEN[0], time.monotonic())
    while _SEEDS and time.monotonic() - _SEED_SEEN[0] < quiet:
        await asyncio.sleep(0.5)


def stop() -> None:
    for srv in _SEEDS:
        srv.close()
