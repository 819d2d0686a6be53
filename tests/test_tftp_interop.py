"""The TFTP server against real clients (curl, atftp with windowsize, tftp-hpa) on loopback.

Each test starts its own server on an ephemeral port in a thread with its own
event loop, so tests are independent under xdist. A missing client tool fails
the test: it never skips.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ramboot import render
from ramboot.access import AccessRule
from ramboot.inventory.store import NodeSpec
from ramboot.namespace import Namespace
from ramboot.proto import tftp_core as tftp
from ramboot.proto.pxe import Client
from ramboot.server.events import EventLog
from ramboot.server.tftp_server import start_tftp

MAC = "52:54:00:12:34:56"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make setup` installs it")
    return path


class ServerThread:
    def __init__(self, namespace: Namespace, events: EventLog):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = namespace.booter.config
        self.server = self._call(start_tftp(cfg, namespace, events, host="127.0.0.1", port=0))
        self.port = self.server.port

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self._call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def env(data_dir: Path, make_booter):
    """Server plus a data dir holding loaders/blob.bin (3 MB) and a pxelinux node."""
    booter = make_booter("[tftp]\nmax_per_source = 3\n", server_ip="127.0.0.1")
    store = make_booter.stores[-1]
    store.nodes.put(NodeSpec(mac=MAC, image="demo", loader="pxelinux"))
    (data_dir / "loaders").mkdir()
    (data_dir / "images" / "demo").mkdir(parents=True)
    blob = os.urandom(3 * 1024 * 1024 + 123)
    (data_dir / "loaders" / "blob.bin").write_bytes(blob)
    (data_dir / "images" / "demo" / "vmlinuz").write_bytes(os.urandom(200_000))
    events = EventLog(store.events)
    events.mac_by_ip["127.0.0.1"] = MAC
    access = AccessRule(booter.config.dhcp.mode, "none", store.directory, store.credentials)
    srv = ServerThread(Namespace(data_dir, booter, access=access), events)
    srv.data_dir, srv.blob, srv.events, srv.booter, srv.store = data_dir, blob, events, booter, store
    yield srv
    srv.close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def run(cmd, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def curl(env, name: str, out: Path, blksize: int = 1468) -> subprocess.CompletedProcess:
    return run([tool("curl"), "-sS", "--tftp-blksize", str(blksize), "-o", str(out),
                f"tftp://127.0.0.1:{env.port}/{name}"], out.parent)


def atftp(env, name: str, out: Path, blksize: int = 1468, windowsize: int = 16) -> subprocess.CompletedProcess:
    return run([tool("atftp"), "--option", f"blksize {blksize}", "--option", f"windowsize {windowsize}",
                "-g", "-r", name, "-l", str(out), "127.0.0.1", str(env.port)], out.parent)


def tftp_hpa(env, name: str, out: Path, mode: str = "binary") -> subprocess.CompletedProcess:
    return run([tool("tftp"), "127.0.0.1", str(env.port), "-m", mode, "-c", "get", name, str(out)], out.parent)


# ------------------------------------------------------------ byte-exact

@pytest.mark.parametrize("blksize", [512, 1468])
def test_curl_lockstep(env, tmp_path, blksize):
    r = curl(env, "blob.bin", tmp_path / "out", blksize)
    assert r.returncode == 0, r.stderr
    assert sha((tmp_path / "out").read_bytes()) == sha(env.blob)


@pytest.mark.parametrize("windowsize", [1, 8, 16, 64])
def test_atftp_windowsize(env, tmp_path, windowsize):
    r = atftp(env, "blob.bin", tmp_path / "out", windowsize=windowsize)
    assert r.returncode == 0, r.stderr
    assert f"windowsize = {windowsize}" in r.stdout + r.stderr  # negotiated, not refused
    assert sha((tmp_path / "out").read_bytes()) == sha(env.blob)


def test_tftp_hpa(env, tmp_path):
    r = tftp_hpa(env, "blob.bin", tmp_path / "out")
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert sha((tmp_path / "out").read_bytes()) == sha(env.blob)


def test_image_file_over_tftp(env, tmp_path):
    r = curl(env, "images/demo/vmlinuz", tmp_path / "k")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "k").read_bytes() == (env.data_dir / "images/demo/vmlinuz").read_bytes()


@pytest.mark.parametrize("client", ["atftp", "curl"])
def test_rollover_with_a_real_client(env, tmp_path, client):
    """blksize 8 and 528 kB: 66,001 blocks, so block numbers wrap past 65535."""
    data = os.urandom(8 * 66_000)
    (env.data_dir / "loaders" / "roll.bin").write_bytes(data)
    if client == "atftp":
        r = atftp(env, "roll.bin", tmp_path / "out", blksize=8, windowsize=64)
    else:
        r = curl(env, "roll.bin", tmp_path / "out", blksize=8)
    assert r.returncode == 0, r.stderr
    assert sha((tmp_path / "out").read_bytes()) == sha(data)


def test_generated_pxelinux_cfg(env, tmp_path):
    name = "pxelinux.cfg/01-52-54-00-12-34-56"
    r = tftp_hpa(env, name, tmp_path / "cfg")
    assert r.returncode == 0, r.stderr
    got = (tmp_path / "cfg").read_text()
    assert "ramboot.token=" in got  # off mode: the access rule takes the address at its word
    token = got.split("ramboot.token=")[1].split()[0]
    assert got == render.pxelinux_config(env.booter.decide(Client(MAC, arch=0, asks="pxelinux-cfg")), token)
    assert "root=live:http://127.0.0.1" in got and "BOOTIF=01-52-54-00-12-34-56" in got
    _wait_event(env, "script", name)


def test_generated_configs_never_touch_the_store_on_the_loop(env, tmp_path):
    """Issue 18: a pxelinux config asks the policy and mints a credential (the store, SQL); TFTP
    does it in a worker thread, so DHCP on the same loop never waits behind the database.
    Watched twice: at the store's parts the policy and the access rule call, and at the engine
    itself (every SQL statement, whoever runs it), each with the thread it ran on."""
    import threading

    from sqlalchemy import event

    directory, store = env.booter.directory, env.store
    loop_thread = env.thread.ident
    seen: list[tuple[str, int]] = []
    statements: list[tuple[str, int]] = []
    originals = {}
    for name in ("get_node", "node_by_uuid", "get_profile", "leases_of", "lease_at"):
        originals[name] = getattr(directory, name)
        setattr(directory, name,
                lambda *a, _n=name, **k: seen.append((_n, threading.get_ident())) or originals[_n](*a, **k))
    mint = store.credentials.mint
    store.credentials.mint = lambda *a, **k: seen.append(("mint", threading.get_ident())) or mint(*a, **k)

    def on_sql(_conn, _cursor, statement, *_rest) -> None:
        statements.append((statement.split()[0], threading.get_ident()))

    event.listen(store.engine, "before_cursor_execute", on_sql)
    try:
        r = tftp_hpa(env, "pxelinux.cfg/01-52-54-00-12-34-56", tmp_path / "cfg")
        assert r.returncode == 0, r.stderr
    finally:
        event.remove(store.engine, "before_cursor_execute", on_sql)
        for name, fn in originals.items():
            setattr(directory, name, fn)
        store.credentials.mint = mint
    assert b"KERNEL" in (tmp_path / "cfg").read_bytes().upper()  # a generated config came back
    assert {n for n, _ in seen} >= {"get_node", "mint"}, seen
    assert all(t != loop_thread for _, t in seen), seen
    assert {kind.upper() for kind, _ in statements} >= {"SELECT", "INSERT"}, statements  # the node, the credential
    assert all(t != loop_thread for _, t in statements), statements


def test_netascii_mode(env, tmp_path):
    """tftp-hpa in ascii mode translates CR LF back: the round trip is exact."""
    text = b"DEFAULT x\nLABEL x\n  KERNEL k\n"
    (env.data_dir / "loaders" / "t.txt").write_bytes(text)
    r = tftp_hpa(env, "t.txt", tmp_path / "t", mode="ascii")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t").read_bytes() == text


def _wait_event(env, stage: str, file: str):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for rec in list(env.events._pending):
            if rec.stage == stage and rec.detail.get("file") == file:
                assert rec.mac == MAC and rec.detail["bytes"] > 0 and rec.detail["seconds"] >= 0
                return rec
        time.sleep(0.05)
    pytest.fail(f"no {stage} event for {file}: {env.events._pending}")


def sample(name: str, **labels) -> float:
    """This process's value of a metric (the servers under test run in this process)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_events_and_metrics(env, tmp_path):
    ok0, bytes0 = sample("ramboot_tftp_transfers_total", outcome="ok"), sample("ramboot_tftp_bytes_total")
    missing0 = sample("ramboot_tftp_transfers_total", outcome="not-found")
    assert curl(env, "blob.bin", tmp_path / "a").returncode == 0
    assert curl(env, "images/demo/vmlinuz", tmp_path / "b").returncode == 0
    assert curl(env, "no-such-file.bin", tmp_path / "c").returncode != 0
    rec = _wait_event(env, "loader", "blob.bin")
    assert rec.detail["bytes"] == len(env.blob)
    _wait_event(env, "kernel", "images/demo/vmlinuz")
    # exact deltas: each transfer counted once, each payload byte once (retransmissions are not bytes)
    assert sample("ramboot_tftp_transfers_total", outcome="ok") - ok0 == 2
    assert sample("ramboot_tftp_bytes_total") - bytes0 == len(env.blob) + 200_000
    assert sample("ramboot_tftp_transfers_total", outcome="not-found") - missing0 == 1


def test_retransmits_are_counted(env):
    """A client that ACKs DATA 1 but not DATA 2 gets DATA 2 again after the 1 s timeout: the counter
    moves by exactly 1. (Before a client's first ACK nothing is resent: a forged RRQ gets one packet.)"""
    payload = os.urandom(600)  # two blocks: 512 + 88
    (env.data_dir / "loaders" / "two.bin").write_bytes(payload)
    rex0, ok0 = sample("ramboot_tftp_retransmits_total"), sample("ramboot_tftp_transfers_total", outcome="ok")
    with raw_socket() as s:
        s.sendto(tftp.Request(tftp.RRQ, "two.bin", "octet", {}).encode(), ("127.0.0.1", env.port))
        first, tid = s.recvfrom(70000)
        assert first == tftp.Data(1, payload[:512]).encode()
        s.sendto(tftp.Ack(1).encode(), tid)
        second, _ = s.recvfrom(70000)
        t0 = time.monotonic()
        again, tid2 = s.recvfrom(70000)  # not acknowledged: the timer resends it
        waited = time.monotonic() - t0
        assert tid2 == tid and again == second == tftp.Data(2, payload[512:]).encode()
        assert 0.8 <= waited <= 2.5, waited
        s.sendto(tftp.Ack(2).encode(), tid)
        deadline = time.monotonic() + 5
        while sample("ramboot_tftp_transfers_total", outcome="ok") == ok0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert sample("ramboot_tftp_transfers_total", outcome="ok") - ok0 == 1
    assert sample("ramboot_tftp_retransmits_total") - rex0 == 1


# ---------------------------------------------------------- raw clients

def raw_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(3)
    return s


def request(env, name: str, opcode: int = tftp.RRQ, **options) -> tuple[tftp.Packet, tuple]:
    s = raw_socket()
    with s:
        s.sendto(tftp.Request(opcode, name, "octet", {k: str(v) for k, v in options.items()}).encode(),
                 ("127.0.0.1", env.port))
        data, peer = s.recvfrom(70000)
        return tftp.parse(data), peer


SECRET = b"top secret, outside the data dir"


@pytest.mark.parametrize("name", [
    "../secret", "../../secret", "images/../../secret", "images/demo/../../../secret",
    "/etc/passwd", "/secret", "..\\secret", "images\\..\\..\\secret",
    "%2e%2e/secret", "%2e%2e%2fsecret", "images/demo/..%2f..%2f..%2fsecret", "./blob.bin",
    "loop", "escape", "images/demo/escape",
])
def test_traversal_is_refused(env, name):
    (env.data_dir.parent / "secret").write_bytes(SECRET)
    loaders = env.data_dir / "loaders"
    if not (loaders / "escape").exists():
        (loaders / "escape").symlink_to(env.data_dir.parent / "secret")
        (env.data_dir / "images" / "demo" / "escape").symlink_to(env.data_dir.parent / "secret")
        (loaders / "loop").symlink_to(loaders / "loop")
    reply, _ = request(env, name)
    assert isinstance(reply, tftp.Error), reply
    assert reply.code in (tftp.ErrorCode.ACCESS_VIOLATION, tftp.ErrorCode.FILE_NOT_FOUND)
    if name in ("escape", "images/demo/escape", "../secret", "/etc/passwd", "%2e%2e/secret", "loop"):
        assert reply.code == tftp.ErrorCode.ACCESS_VIOLATION


def test_traversal_with_tftp_hpa_reads_nothing(env, tmp_path):
    (env.data_dir.parent / "secret").write_bytes(SECRET)
    r = tftp_hpa(env, "../secret", tmp_path / "s")
    assert "Access violation" in r.stdout + r.stderr or "access violation" in r.stdout + r.stderr
    assert not (tmp_path / "s").exists() or (tmp_path / "s").read_bytes() == b""


def test_not_found_is_error_1(env):
    reply, _ = request(env, "nope.bin")
    assert reply == tftp.Error(tftp.ErrorCode.FILE_NOT_FOUND, "file not found")


def test_wrq_is_refused(env):
    reply, _ = request(env, "upload.bin", opcode=tftp.WRQ)
    assert isinstance(reply, tftp.Error) and reply.code == tftp.ErrorCode.ACCESS_VIOLATION
    assert not (env.data_dir / "loaders" / "upload.bin").exists()


def test_each_transfer_has_its_own_port_and_wrong_tid_gets_error_5(env):
    with raw_socket() as s, raw_socket() as intruder:
        s.sendto(tftp.Request(tftp.RRQ, "blob.bin", "octet", {"blksize": "1024"}).encode(), ("127.0.0.1", env.port))
        oack, tid = s.recvfrom(70000)
        assert tftp.parse(oack) == tftp.OAck({"blksize": "1024"})
        assert tid[1] != env.port
        intruder.sendto(tftp.Ack(0).encode(), tid)
        err, src = intruder.recvfrom(100)
        assert tftp.parse(err).code == tftp.ErrorCode.UNKNOWN_TID and src == tid
        got = bytearray()
        block = 0
        s.sendto(tftp.Ack(0).encode(), tid)
        while True:
            d = tftp.parse(s.recvfrom(70000)[0])
            if d == tftp.OAck({"blksize": "1024"}) or (isinstance(d, tftp.Data) and d.block == block & 0xFFFF):
                continue  # a retransmission, when this machine is slow
            assert isinstance(d, tftp.Data) and d.block == (block + 1) & 0xFFFF
            block += 1
            got += d.payload
            s.sendto(tftp.Ack(d.block).encode(), tid)
            if block == 5:
                intruder.sendto(tftp.Ack(5).encode(), tid)  # the transfer must go on
                assert tftp.parse(intruder.recvfrom(100)[0]).code == tftp.ErrorCode.UNKNOWN_TID
            if len(d.payload) < 1024:
                break
        assert bytes(got) == env.blob


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("ramboot_dropped_total", {"protocol": "tftp", "reason": reason}) or 0.0


def _confirm(sock: socket.socket, target: tuple[str, int], blksize: str = "512") -> tuple[str, int]:
    """Ask for blob.bin, ACK the OACK, take DATA 1 and never ACK it: a confirmed, stalled transfer."""
    sock.settimeout(5)
    sock.sendto(tftp.Request(tftp.RRQ, "blob.bin", "octet", {"blksize": blksize}).encode(), target)
    data, tid = sock.recvfrom(100)
    assert tftp.parse(data) == tftp.OAck({"blksize": blksize})
    sock.sendto(tftp.Ack(0).encode(), tid)
    while not isinstance(tftp.parse(sock.recvfrom(2000)[0]), tftp.Data):
        pass  # a retransmitted OACK, on a slow machine
    return tid


def test_per_source_cap(env):
    """max_per_source = 3: with three confirmed transfers, a fourth request from that address gets no answer."""
    socks = [raw_socket() for _ in range(4)]
    target = ("127.0.0.1", env.port)
    try:
        for s in socks[:3]:
            _confirm(s, target)
        socks[3].sendto(tftp.Request(tftp.RRQ, "blob.bin", "octet", {"blksize": "512"}).encode(), target)
        socks[3].settimeout(1.0)
        with pytest.raises(socket.timeout):
            socks[3].recvfrom(100)
    finally:
        for s in socks:
            s.close()


def test_unconfirmed_requests_give_way(data_dir, make_booter):
    """Forged RRQs (never ACKed) cannot hold the total's slots: a new request takes the oldest one's.
    Per source the cap stays hard: a forged address gets no more than max_per_source answers."""
    booter = make_booter("[tftp]\nmax_unconfirmed = 3\nmax_per_source = 2\n", server_ip="127.0.0.1")
    (data_dir / "loaders").mkdir()
    (data_dir / "loaders" / "blob.bin").write_bytes(b"x" * 5000)
    srv = ServerThread(Namespace(data_dir, booter), EventLog(make_booter.stores[-1].events))
    target = ("127.0.0.1", srv.port)
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    socks = []
    rrq = tftp.Request(tftp.RRQ, "blob.bin", "octet", {"blksize": "512"}).encode()
    before, busy = _dropped("evicted-unconfirmed"), _dropped("busy-source")
    try:
        for a in addresses:  # one unconfirmed each: the fourth evicts the first
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((a, 0))
            s.settimeout(5)
            socks.append(s)
            s.sendto(rrq, target)
            assert tftp.parse(s.recvfrom(100)[0]) == tftp.OAck({"blksize": "512"})
        assert _dropped("evicted-unconfirmed") - before == 1
        real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        real.bind(("127.0.0.6", 0))
        socks.append(real)
        _confirm(real, target)  # a real client from a new address still gets through
        assert _dropped("evicted-unconfirmed") - before == 2
        # the per-source cap is hard: a second and a third request from 127.0.0.5
        socks[3].sendto(rrq, target)
        assert tftp.parse(socks[3].recvfrom(100)[0]) == tftp.OAck({"blksize": "512"})
        socks[3].sendto(rrq, target)
        socks[3].settimeout(1.0)
        with pytest.raises(socket.timeout):
            while True:
                data = socks[3].recvfrom(100)[0]  # OACK retransmissions of the first two may come
                assert tftp.parse(data) == tftp.OAck({"blksize": "512"})
        assert _dropped("busy-source") - busy == 1
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_junk_datagrams_leave_it_serving(env, tmp_path):
    """3,000 hostile datagrams (random, truncated, wrong opcodes, bad requests), then a normal fetch."""
    import random

    rnd = random.Random(1234)
    target = ("127.0.0.1", env.port)
    samples = [
        b"", b"\x00", b"\x00\x01", b"\x00\x01x", b"\x00\x01\x00\x00", b"\x00\x02w\x00octet\x00",
        b"\x00\x03\x00\x01data", b"\x00\x04\x00\x01", b"\x00\x05\x00\x00x\x00", b"\x00\x06a\x00b\x00",
        b"\x00\x01blob.bin\x00mail\x00", b"\x00\x01nope\x00octet\x00", b"\x00\x01../x\x00octet\x00",
        b"\x00\x01f\x00octet\x00blksize\x00", b"\xff" * 600, b"\x00\x01" + b"A" * 1500 + b"\x00octet\x00",
    ]
    with raw_socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        for i in range(3000):
            pkt = samples[i % len(samples)] if i % 2 else bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 80)))
            s.sendto(pkt, target)
    r = curl(env, "blob.bin", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert sha((tmp_path / "out").read_bytes()) == sha(env.blob)
    assert run([tool("atftp"), "--option", "windowsize 16", "-g", "-r", "blob.bin", "-l", str(tmp_path / "o2"),
                "127.0.0.1", str(env.port)], tmp_path).returncode == 0
    assert sha((tmp_path / "o2").read_bytes()) == sha(env.blob)



def test_total_transfer_cap(data_dir, make_booter):
    """max_transfers = 2: with two confirmed transfers, a third request gets no answer; it is served once a
    slot frees up. An unconfirmed transfer never holds a slot against a new request."""
    booter = make_booter("[tftp]\nmax_transfers = 2\n", server_ip="127.0.0.1")
    (data_dir / "loaders").mkdir()
    (data_dir / "loaders" / "f").write_bytes(b"x" * 100)
    srv = ServerThread(Namespace(data_dir, booter), EventLog(make_booter.stores[-1].events))
    socks = [raw_socket() for _ in range(4)]
    server = ("127.0.0.1", srv.port)
    rrq = tftp.Request(tftp.RRQ, "f", "octet", {"tsize": "0"}).encode()
    try:
        replies = []
        for s in socks[:2]:
            s.sendto(rrq, server)
            data, peer = s.recvfrom(100)
            replies.append((tftp.parse(data), peer))
        assert [r for r, _ in replies] == [tftp.OAck({"tsize": "100"})] * 2
        # the first ACKs its OACK (confirmed); the second never does
        tid = replies[0][1]
        socks[0].sendto(tftp.Ack(0).encode(), tid)
        while (reply := tftp.parse(socks[0].recvfrom(200)[0])) == tftp.OAck({"tsize": "100"}):
            pass  # a retransmitted OACK, when this machine is slow
        assert reply == tftp.Data(1, b"x" * 100)
        # the third takes the unconfirmed second's slot, and confirms
        socks[2].sendto(rrq, server)
        data, tid2 = socks[2].recvfrom(100)
        assert tftp.parse(data) == tftp.OAck({"tsize": "100"})
        socks[2].sendto(tftp.Ack(0).encode(), tid2)
        while (reply := tftp.parse(socks[2].recvfrom(200)[0])) == tftp.OAck({"tsize": "100"}):
            pass
        assert reply == tftp.Data(1, b"x" * 100)
        # two confirmed transfers: a fourth request gets silence
        socks[3].sendto(rrq, server)
        socks[3].settimeout(1.0)
        with pytest.raises(socket.timeout):
            socks[3].recvfrom(100)
        socks[0].sendto(tftp.Ack(1).encode(), tid)  # transfer 1 done: a slot is free
        deadline = time.monotonic() + 5
        socks[3].settimeout(0.5)
        reply = None
        while time.monotonic() < deadline:  # the client resends, as a PXE ROM would
            socks[3].sendto(rrq, server)
            try:
                reply = tftp.parse(socks[3].recvfrom(100)[0])
            except TimeoutError:
                continue
            if isinstance(reply, tftp.OAck):
                break
        assert reply == tftp.OAck({"tsize": "100"})
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_read_error_ends_the_transfer_not_the_server(env, tmp_path, monkeypatch):
    """An I/O error while reading gets the client an ERROR, frees the slot, and the next fetch works."""
    from ramboot.server.tftp_server import FileSource

    real = FileSource.readinto
    calls = {"n": 0}

    def flaky(self, bufs, index):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(5, "Input/output error")
        return real(self, bufs, index)

    monkeypatch.setattr(FileSource, "readinto", flaky)
    r = curl(env, "blob.bin", tmp_path / "a")
    assert r.returncode != 0
    r = curl(env, "blob.bin", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert sha((tmp_path / "b").read_bytes()) == sha(env.blob)


# ---------------------------------------------------------------- UDP GSO

SEGMENT = 4 + 1468


class RecordingSocket:
    """A transfer socket that notes each send's size; `refuse_gso` fails the first
    GSO send with EINVAL, as a route without offload (or a segment over the MTU) does."""

    def __init__(self, sock: socket.socket, sends: list[int], refuse_gso: bool):
        self._sock, self._sends, self._refuse = sock, sends, refuse_gso

    def sendto(self, data, addr):
        self._sends.append(len(data))
        return self._sock.sendto(data, addr)

    def sendmsg(self, buffers, ancdata, flags, addr):
        self._sends.append(sum(len(b) for b in buffers))
        if self._refuse:
            self._refuse = False
            raise OSError(errno.EINVAL, "Invalid argument")
        return self._sock.sendmsg(buffers, ancdata, flags, addr)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class SendLog(list):
    refuse_gso = False


@pytest.fixture
def sends(monkeypatch):
    """Sizes of every send on transfer sockets; `sends.refuse_gso = True` makes routes refuse GSO."""
    from ramboot.server.tftp_server import TftpServer

    record = SendLog()
    real = TftpServer._transfer_socket
    monkeypatch.setattr(TftpServer, "_transfer_socket",
                        lambda self, local: RecordingSocket(real(self, local), record, record.refuse_gso))
    return record


def _windowed_fetch(env, tmp_path) -> tuple[bytes, int]:
    """atftp, windowsize 64, of a file of 30 windows and a short last block: (file, blocks)."""
    data = os.urandom(1468 * 64 * 30 + 1000)
    (env.data_dir / "loaders" / "windows.bin").write_bytes(data)
    r = atftp(env, "windows.bin", tmp_path / "out", windowsize=64)
    assert r.returncode == 0, r.stderr
    assert sha((tmp_path / "out").read_bytes()) == sha(data)
    return data, len(data) // 1468 + 1


def test_windows_go_out_as_gso_sends(env, tmp_path, sends):
    data, blocks = _windowed_fetch(env, tmp_path)
    assert env.server.gso is True
    gso = [n for n in sends if n > SEGMENT]
    assert gso and max(gso) <= 65507
    assert all(n % SEGMENT in (0, 1004) for n in gso)  # whole datagrams; the short last one ends a send
    assert len(sends) <= blocks // 20  # 64 blocks in two sends, not 64


def test_gso_off_sends_one_datagram_at_a_time(env, tmp_path, sends):
    env.server.gso = False  # as on a kernel without UDP_SEGMENT
    data, blocks = _windowed_fetch(env, tmp_path)
    assert max(sends) <= SEGMENT and len(sends) >= blocks


def test_a_route_refusing_gso_falls_back_mid_transfer(env, tmp_path, sends):
    sends.refuse_gso = True
    data, blocks = _windowed_fetch(env, tmp_path)
    assert len([n for n in sends if n > SEGMENT]) == 1  # the refused send only; its datagrams went one by one
    assert len(sends) >= blocks


def test_gso_never_splits_an_oack_longer_than_a_block(env):
    """blksize 8: the OACK (and any ERROR) is longer than a DATA segment, and must still go out whole."""
    opts = {"blksize": "8", "windowsize": "4", "tsize": "0"}
    with raw_socket() as s:
        s.sendto(tftp.Request(tftp.RRQ, "blob.bin", "octet", opts).encode(), ("127.0.0.1", env.port))
        oack, tid = s.recvfrom(1000)
        assert tftp.parse(oack) == tftp.OAck({**opts, "tsize": str(len(env.blob))})
        s.sendto(tftp.Ack(0).encode(), tid)
        window = [tftp.parse(s.recvfrom(1000)[0]) for _ in range(4)]
        assert [(d.block, d.payload) for d in window] == [(b, env.blob[(b - 1) * 8 : b * 8]) for b in range(1, 5)]


# ------------------------------------------------- lock-step on a thread

def _lockstep_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tftp-lockstep")]


def _soon(cond, seconds: float = 5) -> bool:
    """`cond()` within `seconds` (the DATA leaves before the loop hands its transfer to a thread)."""
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    return cond()


def _fetch_lockstep(sock: socket.socket, server: tuple[str, int], name: str, blksize: int = 1024,
                    on_block=None) -> bytes:
    """A raw lock-step client: RRQ with blksize, ACK 0, then ACK each block; `on_block(n, tid)` after each."""
    sock.sendto(tftp.Request(tftp.RRQ, name, "octet", {"blksize": str(blksize)}).encode(), server)
    oack, tid = sock.recvfrom(70000)
    assert tftp.parse(oack) == tftp.OAck({"blksize": str(blksize)})
    sock.sendto(tftp.Ack(0).encode(), tid)
    got, block = bytearray(), 0
    while True:
        d = tftp.parse(sock.recvfrom(70000)[0])
        if isinstance(d, tftp.OAck) or (isinstance(d, tftp.Data) and d.block == block & 0xFFFF):
            continue  # a retransmission, when this machine is slow
        assert isinstance(d, tftp.Data) and d.block == (block + 1) & 0xFFFF, d
        block += 1
        got += d.payload
        if on_block is not None:
            on_block(block, tid)
        sock.sendto(tftp.Ack(d.block).encode(), tid)
        if len(d.payload) < blksize:
            return bytes(got)


def test_lockstep_is_served_by_a_thread(env, tmp_path):
    """Once confirmed, a lock-step transfer leaves the loop for a thread of the pool; it ends with the
    loop's bookkeeping (event, metrics, per-source count, the budget given back)."""
    ok0, bytes0 = sample("ramboot_tftp_transfers_total", outcome="ok"), sample("ramboot_tftp_bytes_total")
    seen = []

    def on_block(n, tid):
        if n == 3:
            seen.append((len(env.server.threaded), sample("ramboot_tftp_transfers_active", state="thread"),
                         len(_lockstep_threads())))

    with raw_socket() as s:
        assert _fetch_lockstep(s, ("127.0.0.1", env.port), "blob.bin", on_block=on_block) == env.blob
    assert seen == [(1, 1.0, 1)]
    rec = _wait_event(env, "loader", "blob.bin")
    assert rec.detail["bytes"] == len(env.blob)
    assert _soon(lambda: not env.server.transfers)
    assert not env.server.threaded and not env.server.per_source
    assert env.server.budget.used == 0
    assert sample("ramboot_tftp_transfers_total", outcome="ok") - ok0 == 1
    assert sample("ramboot_tftp_bytes_total") - bytes0 == len(env.blob)
    r = curl(env, "blob.bin", tmp_path / "out")  # and a real client, the same way
    assert r.returncode == 0, r.stderr
    assert sha((tmp_path / "out").read_bytes()) == sha(env.blob)


def test_a_forged_port_mid_transfer_gets_error_5_from_the_thread(env):
    """A datagram from another port to a threaded transfer's TID gets ERROR 5 from that TID, and the
    transfer completes byte for byte, undisturbed; a duplicate ACK is never answered."""
    tid5 = sample("ramboot_dropped_total", protocol="tftp", reason="unknown-tid")
    stale = sample("ramboot_dropped_total", protocol="tftp", reason="stale-or-junk")
    rex = sample("ramboot_tftp_retransmits_total")
    with raw_socket() as s, raw_socket() as intruder:
        def on_block(n, tid):
            if n == 5:
                assert len(env.server.threaded) == 1
                intruder.sendto(tftp.Ack(5).encode(), tid)  # the ACK the transfer waits for, forged
                err, src = intruder.recvfrom(100)
                assert tftp.parse(err).code == tftp.ErrorCode.UNKNOWN_TID and src == tid
            if n == 6:
                s.sendto(tftp.Ack(5).encode(), tid)  # a duplicate: no answer (Sorcerer's Apprentice)
        assert _fetch_lockstep(s, ("127.0.0.1", env.port), "blob.bin", on_block=on_block) == env.blob
    assert sample("ramboot_dropped_total", protocol="tftp", reason="unknown-tid") - tid5 == 1
    assert sample("ramboot_dropped_total", protocol="tftp", reason="stale-or-junk") - stale >= 1  # the duplicate
    assert sample("ramboot_tftp_retransmits_total") == rex  # ... never answered


def test_the_thread_retransmits_on_timeout_then_gives_up(env):
    """On the thread the core's timer still decides: an unacknowledged DATA comes again after the
    1 s timeout, with backoff, and a client that stops answering ends the transfer with ERROR
    "timed out" (two retries here, backoff capped at 2 s, to keep the test short)."""
    payload = os.urandom(5000)
    (env.data_dir / "loaders" / "small.bin").write_bytes(payload)
    env.server.limits = tftp.Limits(max_retries=2, max_timeout=2.0)
    rex0, timeout0 = sample("ramboot_tftp_retransmits_total"), sample("ramboot_tftp_transfers_total",
                                                                       outcome="timeout")
    with raw_socket() as s:
        s.settimeout(10)
        s.sendto(tftp.Request(tftp.RRQ, "small.bin", "octet", {}).encode(), ("127.0.0.1", env.port))
        first, tid = s.recvfrom(70000)
        assert first == tftp.Data(1, payload[:512]).encode()
        s.sendto(tftp.Ack(1).encode(), tid)
        second, _ = s.recvfrom(70000)
        times = [time.monotonic()]
        assert _soon(lambda: len(env.server.threaded) == 1)
        while True:  # never ACKed again: resent with backoff, then given up
            data, src = s.recvfrom(70000)
            times.append(time.monotonic())
            assert src == tid
            if tftp.parse(data) == tftp.Error(tftp.ErrorCode.NOT_DEFINED, "timed out"):
                break
            assert data == second == tftp.Data(2, payload[512:1024]).encode()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 3, gaps  # 2 resends, then the ERROR
    # 1 s, then 2 s (doubled), then 2 s (capped); the upper bounds leave room for a loaded machine
    assert 0.8 <= gaps[0] <= 1.7 and 1.8 <= gaps[1] <= 3.5 and 1.8 <= gaps[2] <= 3.5, gaps
    assert _soon(lambda: sample("ramboot_tftp_transfers_total", outcome="timeout") - timeout0 == 1)
    assert not env.server.threaded and not env.server.transfers
    assert sample("ramboot_tftp_retransmits_total") - rex0 == 2


def test_a_full_pool_leaves_lockstep_transfers_on_the_loop(data_dir, make_booter, tmp_path):
    """lockstep_threads = 1: while one transfer holds the thread, a second is served on the loop,
    byte for byte; once the thread is free, the next transfer takes it."""
    booter = make_booter("[tftp]\nlockstep_threads = 1\n", server_ip="127.0.0.1")
    (data_dir / "loaders").mkdir()
    blob = os.urandom(300_000)
    (data_dir / "loaders" / "blob.bin").write_bytes(blob)
    srv = ServerThread(Namespace(data_dir, booter), EventLog(make_booter.stores[-1].events))
    server = ("127.0.0.1", srv.port)
    try:
        with raw_socket() as a:
            a.sendto(tftp.Request(tftp.RRQ, "blob.bin", "octet", {}).encode(), server)
            _, tid = a.recvfrom(70000)
            a.sendto(tftp.Ack(1).encode(), tid)  # confirmed: the thread takes it
            a.recvfrom(70000)
            assert _soon(lambda: len(srv.server.threaded) == 1)
            on_loop = []

            def on_block(n, _tid):
                if n == 3:
                    on_loop.append((len(srv.server.threaded), len(srv.server.transfers)))
            with raw_socket() as b:
                assert _fetch_lockstep(b, server, "blob.bin", on_block=on_block) == blob
            assert on_loop == [(1, 2)]  # the second ran beside the first, not on a thread
            r = run([tool("curl"), "-sS", "--tftp-blksize", "1468", "-o", str(tmp_path / "c"),
                     f"tftp://127.0.0.1:{srv.port}/blob.bin"], tmp_path)
            assert r.returncode == 0 and (tmp_path / "c").read_bytes() == blob, r.stderr
            a.sendto(tftp.Error(tftp.ErrorCode.NOT_DEFINED, "bye").encode(), tid)  # the first aborts
        assert _soon(lambda: not srv.server.threaded)
        seen = []
        with raw_socket() as c:
            assert _fetch_lockstep(c, server, "blob.bin",
                                   on_block=lambda n, _t: n == 3 and seen.append(len(srv.server.threaded))) == blob
        assert seen == [1]  # the thread is free again: the next transfer takes it
    finally:
        srv.close()


def test_closing_mid_transfer_leaves_no_thread_behind(data_dir, make_booter):
    """The server closes while a threaded transfer waits for an ACK: the thread wakes, the transfer
    ends as aborted with its bookkeeping, and the pool's threads are gone."""
    booter = make_booter("", server_ip="127.0.0.1")
    (data_dir / "loaders").mkdir()
    (data_dir / "loaders" / "blob.bin").write_bytes(os.urandom(100_000))
    srv = ServerThread(Namespace(data_dir, booter), EventLog(make_booter.stores[-1].events))
    aborted0 = sample("ramboot_tftp_transfers_total", outcome="aborted")
    try:
        with raw_socket() as s:
            s.sendto(tftp.Request(tftp.RRQ, "blob.bin", "octet", {"blksize": "1468"}).encode(),
                     ("127.0.0.1", srv.port))
            _, tid = s.recvfrom(70000)
            s.sendto(tftp.Ack(0).encode(), tid)
            s.recvfrom(70000)  # DATA 1, never ACKed: the thread waits in recvfrom (timeout 1 s)
            assert _soon(lambda: len(srv.server.threaded) == 1) and len(_lockstep_threads()) == 1
            t0 = time.monotonic()
            srv._call(srv.server.close())
            assert time.monotonic() - t0 < 0.5  # woken at once, not at its receive timeout
    finally:
        srv.close()
    assert not _lockstep_threads()
    assert not srv.server.transfers and not srv.server.threaded and srv.server.budget.used == 0
    assert sample("ramboot_tftp_transfers_total", outcome="aborted") - aborted0 == 1


def test_ipv6_lockstep_stays_on_the_loop(data_dir, make_booter):
    """Over IPv6 a lock-step transfer is not handed to a thread (the connected socket and its
    sibling do not share the port reliably there: docs/decisions.md); it completes on the loop."""
    booter = make_booter("", server_ip="127.0.0.1")
    (data_dir / "loaders").mkdir()
    blob = os.urandom(100_000)
    (data_dir / "loaders" / "blob.bin").write_bytes(blob)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cfg = booter.config
    server = asyncio.run_coroutine_threadsafe(
        start_tftp(cfg, Namespace(data_dir, booter), EventLog(make_booter.stores[-1].events), host="::", port=0),
        loop).result(10)
    seen = []
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
            s.settimeout(3)
            got = _fetch_lockstep(s, ("::1", server.port), "blob.bin",
                                  on_block=lambda n, _t: n == 3 and seen.append((len(server.threaded),
                                                                                  len(server.transfers))))
        assert got == blob and seen == [(0, 1)]
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
