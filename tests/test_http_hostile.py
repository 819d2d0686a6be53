"""Malformed HTTP requests cost a counter and at most a debug line, never a traceback (issue 13).

Before: 2,000 malformed requests wrote about 1,400 tracebacks (aiohttp.server logging
each rejected request; BrokenPipeError / ConnectionResetError escaping `_sendfile`
when a client left mid-file). The same requests as the netns flood (tests/flood_sender.py),
against a real server on loopback, with every log record at DEBUG captured.
"""

from __future__ import annotations

import logging
import os
import urllib.request

import flood_sender
from conftest import write_fake_image
from httpserver import LiveServer


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_malformed_requests_write_no_traceback(data_dir):
    write_fake_image(data_dir, "demo", rootfs=os.urandom(8 << 20))
    root = logging.getLogger()
    cap, level = _Capture(), root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    s = LiveServer(data_dir)
    try:
        got = flood_sender.http({"host": "127.0.0.1", "port": s.port, "count": 600, "concurrency": 8})
        assert got["status"].get("400", 0) > 100 and got["status"].get("left") == 60, got
        req = urllib.request.Request(f"{s.base}/metrics", headers={"Authorization": f"Bearer {s.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
        with urllib.request.urlopen(f"{s.base}/images/demo/vmlinuz", timeout=5) as r:
            assert r.read() == b"kernel"  # still serving
    finally:
        s.close()
        root.removeHandler(cap)
        root.setLevel(level)
    with_tb = [r for r in cap.records if r.exc_info and r.name.startswith(("aiohttp", "ramboot"))]
    assert not with_tb, [(r.name, r.getMessage(), r.exc_info[1]) for r in with_tb[:5]]
    for reason in ("client-gone", "line-too-long", "path-refused", "range-unsatisfiable"):
        assert f'ramboot_dropped_total{{protocol="http",reason="{reason}"}}' in text, reason
