"""Fuzz targets: each takes one input and fails only by raising something it must never raise.

Run by `make fuzz` (fuzz/run.py, atheris: coverage-guided, seeded from the golden
captures); `tests/test_fuzz_regressions.py` replays every seed and every input that
ever found a bug in `make test`, with the same targets.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

from ramboot.config import ConfigError, parse_config
from ramboot.images.errors import ImageError
from ramboot.images.rootfs import _apply_tar
from ramboot.proto import dhcp_codec, http_conditional, tftp_core
from ramboot.proto.dhcp_core import DhcpCore, DhcpSettings
from ramboot.proto.pxe import BootFile, Client


class _Answer:
    boot_file = BootFile("undionly.kpxe", http=False)
    fixed_ip = None
    hostname = "n1"
    node = "52:54:00:00:00:01"  # registered: the unknown-lease cap is not what is fuzzed here


def _decide(client: Client) -> _Answer | None:
    return None if client.mac.endswith("ff") else _Answer()


_FULL = DhcpCore(DhcpSettings(mode="full", server_ip="10.0.0.1", range_first="10.0.0.100",
                              range_last="10.0.0.110", router="10.0.0.1", dns=("10.0.0.1",), domain="lab"),
                 _decide, lambda: {"10.0.0.105": "52:54:00:00:00:05"})
_PROXY = DhcpCore(DhcpSettings(mode="proxy", server_ip="10.0.0.1"), _decide)
_NOW = [1_000_000.0]


def dhcp_codec_target(data: bytes) -> None:
    """decode() raises only DhcpDecodeError; what it decodes encodes again (or DhcpEncodeError), and that decodes."""
    try:
        pkt = dhcp_codec.decode(data)
    except dhcp_codec.DhcpDecodeError:
        return
    try:
        wire = dhcp_codec.encode(pkt, 1500)
    except dhcp_codec.DhcpEncodeError:
        return
    again = dhcp_codec.decode(wire)
    assert again.xid == pkt.xid and again.chaddr == pkt.chaddr and again.msg_type == pkt.msg_type


def dhcp_core_target(data: bytes) -> None:
    """The core answers anything: a Result, never an exception; replies decode."""
    if not data:
        return
    core = _PROXY if data[0] & 1 else _FULL
    port = 4011 if data[0] & 2 else 67
    _NOW[0] += 1.0 + (data[0] >> 2)
    res = core.handle(data[1:], ("10.0.0.50", 68), port, _NOW[0])
    for s in res.sends:
        dhcp_codec.decode(s.data)


def tftp_target(data: bytes) -> None:
    """parse() raises only MalformedPacket; a read transfer fed any packets and ticks never raises,
    and never sends DATA beyond the file."""
    if len(data) < 2:
        return
    cut = data[0] % (len(data) - 1) + 1
    head, rest = data[1:cut], data[cut:]
    try:
        pkt = tftp_core.parse(head)
    except tftp_core.MalformedPacket:
        pkt = tftp_core.Request(tftp_core.RRQ, "f", "octet", {"blksize": "8", "windowsize": "4"})
    if not isinstance(pkt, tftp_core.Request):
        return
    payload = bytes(range(256)) * 3
    source = tftp_core.BytesSource(payload)
    limits = tftp_core.Limits(max_blksize=1468, max_windowsize=16)
    t = tftp_core.ReadTransfer(pkt, source, limits, runs=bool(data[0] & 1))
    now = 0.0
    t.start(now)
    for i in range(0, len(rest), 4):
        now += 0.3
        t.on_packet(rest[i:i + 4], now) if rest[i] & 1 else t.on_timer(now)
        t.read_ahead()
    assert t.bytes_sent <= len(payload)


def http_range_target(data: bytes) -> None:
    """plan() never raises, and a 206 stays inside the file."""
    text = data.decode("latin-1")
    parts = text.split("\n")
    size = int.from_bytes(data[:3], "big") if len(data) >= 3 else 0
    names = ("Range", "If-Range", "If-Match", "If-None-Match")
    headers = {n: parts[i] for i, n in enumerate(names) if i < len(parts)}
    p = http_conditional.plan(headers, '"abc"', size)
    if p.status in (200, 206):
        assert 0 <= p.start and p.count >= 0 and p.start + p.count <= size, (p, size)


_TAR_ROOT = Path(tempfile.mkdtemp(prefix="ramboot-fuzz-tar-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def tar_layer_target(data: bytes) -> None:
    """A layer applies or raises ImageError; nothing is ever written outside the tree."""
    tree = _TAR_ROOT / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    try:
        _apply_tar(tree, io.BytesIO(data), "fuzz")
    except ImageError:
        pass
    assert os.listdir(_TAR_ROOT) == ["tree"], os.listdir(_TAR_ROOT)


def config_target(data: bytes) -> None:
    """A config parses or raises ConfigError, one line."""
    try:
        parse_config(data.decode("utf-8", "replace"), "fuzz.toml")
    except ConfigError as e:
        assert "\n" not in str(e), str(e)


TARGETS = {
    "dhcp_codec": dhcp_codec_target,
    "dhcp_core": dhcp_core_target,
    "tftp": tftp_target,
    "http_range": http_range_target,
    "tar_layer": tar_layer_target,
    "config": config_target,
}
