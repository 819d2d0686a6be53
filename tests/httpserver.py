"""A real ramboot HTTP server on loopback, in a thread, for tests that drive it with real clients."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

from ramboot.config import parse_config
from ramboot.inventory.store import Store
from ramboot.namespace import Namespace
from ramboot.overlays import OverlayRenderer
from ramboot.policy import Booter
from ramboot.server.events import EventLog
from ramboot.server.http_server import start_http


class LiveServer:
    def __init__(self, data_dir: Path, extra_config: str = ""):
        self.config = parse_config(f'data_dir = "{data_dir}"\n{extra_config}')
        self.store = Store(self.config.database_url)
        self.booter = Booter(self.config, self.store, "127.0.0.1")
        self.namespace = Namespace(self.config.data_dir, self.booter,
                                   OverlayRenderer(self.config.data_dir, self.store, self.booter))
        self.events = EventLog(self.store, flush_interval=0.05)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self.call(self._start())
        self.port = self.server.port
        self.base = f"http://127.0.0.1:{self.port}"

    async def _start(self):
        self.events.start()
        return await start_http(self.config, self.namespace, self.booter, self.store, self.events, host="127.0.0.1", port=0)

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn, *args):
        """Run a plain function on the server's loop (EventLog is not thread-safe)."""

        async def wrap():
            return fn(*args)

        return self.call(wrap())

    def request(self, method: str, path: str, body: object = None, token: str | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        return status, (json.loads(raw) if raw else None)

    def close(self) -> None:
        async def stop():
            await self.server.close()
            await self.events.stop()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
        self.store.close()
