"""A real ramboot HTTP server on loopback, in a thread, for tests that drive it with real clients."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

from ramboot.access import AccessRule
from ramboot.api_token import ensure_admin_token
from ramboot.config import parse_config
from ramboot.inventory.store import Store
from ramboot.namespace import Namespace
from ramboot.overlays import OverlayRenderer
from ramboot.policy import Booter
from ramboot.server.events import EventLog
from ramboot.server.http_server import start_http


class _Admin:
    """The default of `LiveServer.request`'s token: the server's admin token."""


ADMIN = _Admin()


class LiveServer:
    def __init__(self, data_dir: Path, extra_config: str = ""):
        self.config = parse_config(f'data_dir = "{data_dir}"\n{extra_config}')
        # This server listens on plain HTTP only: let reports and overlays through it, as the
        # operator may ([security] overlay_over_http); tests of the HTTPS rule switch it back.
        self.config.security.overlay_over_http = "overlay_over_http" not in extra_config or \
            self.config.security.overlay_over_http
        ensure_admin_token(self.config)  # as `serve` does: DATA/api-token unless [api] token is set
        self.token = self.config.api.token
        self.store = Store.for_config(self.config)
        self.booter = Booter(self.config, self.store.directory, "127.0.0.1")
        self.access = AccessRule(self.config.dhcp.mode, self.config.security.proxy_secrets, self.store.directory,
                                 self.store.credentials)
        self.namespace = Namespace(self.config.data_dir, self.booter,
                                   OverlayRenderer(self.config.data_dir, self.store, self.booter.catalog), self.access)
        self.events = EventLog(self.store.events, flush_interval=0.05)
        self.tokens: dict[str, str | None] = {}  # MAC -> its boot's credential (`report`)
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

    def request(self, method: str, path: str, body: object = None, token: str | None | _Admin = ADMIN,
                headers: dict[str, str] | None = None) -> tuple[int, object]:
        """One API call; `token` defaults to the admin token (None: no Authorization header)."""
        if isinstance(token, _Admin):
            token = self.token
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None and not req.has_header("Content-type"):
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

    def node_token(self, mac: str, source: str = "127.0.0.1") -> str | None:
        """This boot's credential for `mac`, as the node gets it: in its boot script, if the
        access rule takes `source` for that machine."""
        import http.client
        import re

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(source, 0))
        try:
            conn.request("GET", f"/boot/{mac.replace(':', '-')}.ipxe")
            m = re.search(rb"ramboot\.token=([A-Za-z0-9_-]+)", conn.getresponse().read())
        finally:
            conn.close()
        return m.group(1).decode() if m else None

    def report(self, mac: str, kind: str, body: object) -> tuple[int, object]:
        """A node's report (`kind`: events or inventory) with its boot's credential, as the initramfs
        sends it; the credential is fetched once per MAC (each script fetch is a new boot)."""
        if mac not in self.tokens:
            self.tokens[mac] = self.node_token(mac)
        return self.request("POST", f"/api/v1/nodes/{mac}/{kind}", body, token=self.tokens[mac])

    def close(self) -> None:
        async def stop():
            await self.server.close()
            await self.events.stop()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
        self.store.close()
