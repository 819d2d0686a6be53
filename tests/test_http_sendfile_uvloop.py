"""Files go out with sendfile on uvloop too (it has no loop.sendfile): byte-exact, ranges included."""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request

import uvloop  # a dependency of ramboot on Linux: missing, it is an error, never a skip

from httpserver import LiveServer


class UvloopServer(LiveServer):
    def __init__(self, *a, **kw):
        orig = asyncio.new_event_loop
        asyncio.new_event_loop = uvloop.new_event_loop  # LiveServer makes its loop with this
        try:
            super().__init__(*a, **kw)
        finally:
            asyncio.new_event_loop = orig


def test_sendfile_on_uvloop_byte_exact(data_dir):
    img = data_dir / "images" / "big"
    img.mkdir(parents=True)
    body = os.urandom(6 << 20)  # larger than any socket buffer: the EAGAIN path runs
    (img / "rootfs.squashfs").write_bytes(body)
    srv = UvloopServer(data_dir)
    try:
        assert "uvloop" in type(srv.loop).__module__
        with urllib.request.urlopen(f"{srv.base}/images/big/rootfs.squashfs", timeout=30) as r:
            got = r.read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
        req = urllib.request.Request(f"{srv.base}/images/big/rootfs.squashfs", headers={"Range": "bytes=1000-4194303"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 206
            assert r.read() == body[1000:4194304]
    finally:
        srv.close()
