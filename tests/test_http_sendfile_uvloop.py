"""Files go out with sendfile on uvloop too (it has no loop.sendfile): byte-exact, ranges included."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
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


def test_a_stalled_client_stops_no_one_and_every_send_buffer_is_given_back(data_dir):
    """A client that stops reading mid-file holds only its own body; the larger send buffers
    (taken by clients that saturate autotuning) all come back when their bodies end."""
    from ramboot.server import http_files

    img = data_dir / "images" / "big"
    img.mkdir(parents=True)
    body = os.urandom(64 << 20)
    (img / "rootfs.squashfs").write_bytes(body)
    srv = UvloopServer(data_dir)
    stalled = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        stalled.sendall(b"GET /images/big/rootfs.squashfs HTTP/1.1\r\nHost: x\r\n\r\n")
        assert stalled.recv(12).startswith(b"HTTP/1.1 200")  # then it reads nothing more
        for _ in range(2):
            with urllib.request.urlopen(f"{srv.base}/images/big/rootfs.squashfs", timeout=30) as r:
                assert hashlib.sha256(r.read()).digest() == hashlib.sha256(body).digest()
        stalled.close()
        deadline = time.monotonic() + 10
        while srv.run(lambda: http_files._SNDBUF.in_use) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.run(lambda: http_files._SNDBUF.in_use) == 0
    finally:
        stalled.close()
        srv.close()
