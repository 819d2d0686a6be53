"""Which seeding peer a root download goes to (server/seeding.py): same sha256 only, the
downloader's group first, at most `seed_fanout` at a time, refused peers skipped, slots freed
when the download is reported or after HOLD seconds; table-driven where it can be."""

from __future__ import annotations

import pytest

from ramboot.config import ConfigError, parse_config
from ramboot.server.seeding import HOLD, SEED_PORT, Seeds

ROOT, OTHER = "a" * 64, "b" * 64


def _seeds(fanout: int = 2) -> Seeds:
    s = Seeds(fanout)
    s.offer("52:54:00:00:00:01", "10.60.1.10", "demo", {"rootfs.squashfs": ROOT}, "rack-a", 1.0)
    s.offer("52:54:00:00:00:02", "10.60.2.10", "demo", {"rootfs.squashfs": ROOT}, "rack-b", 2.0)
    s.offer("52:54:00:00:00:03", "10.60.2.11", "other", {"rootfs.squashfs": OTHER}, "rack-b", 3.0)
    return s


@pytest.mark.parametrize(("group", "sha", "want"), [
    ("rack-a", ROOT, "10.60.1.10"),
    ("rack-b", ROOT, "10.60.2.10"),  # its own rack's peer, though rack A's seeded first
    (None, ROOT, "10.60.1.10"),  # no group: the oldest of the least busy
    ("rack-b", OTHER, "10.60.2.11"),  # another image: only its own holders
    ("rack-a", "c" * 64, None),  # nobody holds it: the server sends it
])
def test_a_download_goes_to_a_peer_holding_the_same_sha256_in_its_group_first(group, sha, want) -> None:
    peer = _seeds().pick("52:54:00:00:00:99", sha, group, 10.0)
    assert (peer.ip if peer else None) == want
    if peer:
        assert peer.url("rootfs.squashfs") == f"http://{want}:{SEED_PORT}/images/{peer.image}/rootfs.squashfs"


def test_each_peer_serves_at_most_fanout_at_a_time_then_the_server_does() -> None:
    s = _seeds(fanout=2)
    got = [s.pick(f"52:54:00:00:01:{i:02x}", ROOT, "rack-a", 10.0) for i in range(5)]
    assert [p.ip if p else None for p in got] == ["10.60.1.10", "10.60.1.10", "10.60.2.10", "10.60.2.10", None]
    # A reported download frees its slot at once; an unreported one after HOLD seconds.
    s.done("52:54:00:00:01:00", f"http://10.60.1.10:{SEED_PORT}/images/demo/rootfs.squashfs", 1000)
    assert s.pick("52:54:00:00:01:10", ROOT, "rack-a", 10.0).ip == "10.60.1.10"
    assert s.pick("52:54:00:00:01:11", ROOT, "rack-a", 10.0) is None
    assert s.pick("52:54:00:00:01:11", ROOT, "rack-a", 10.0 + HOLD).ip == "10.60.1.10"
    assert s.peers["52:54:00:00:00:01"].served_bytes == 1000 and s.peers["52:54:00:00:00:01"].downloads == 1


def test_a_refused_peer_is_skipped_until_it_boots_again() -> None:
    s = _seeds()
    url = f"http://10.60.1.10:{SEED_PORT}/images/demo/rootfs.squashfs"
    assert s.refuse("52:54:00:00:00:99", url, "sha256 mismatch").refused == "sha256 mismatch"
    assert s.pick("52:54:00:00:00:98", ROOT, "rack-a", 10.0).ip == "10.60.2.10"
    s.drop("52:54:00:00:00:01")  # it boots again (its initramfs reports) ...
    s.offer("52:54:00:00:00:01", "10.60.1.10", "demo", {"rootfs.squashfs": ROOT}, "rack-a", 20.0)  # ... and seeds
    assert s.pick("52:54:00:00:00:97", ROOT, "rack-a", 21.0).ip == "10.60.1.10"


@pytest.mark.parametrize("url", ["http://10.60.1.10/images/demo/rootfs.squashfs",  # the server's port, not a peer's
                                 "http://10.9.9.9:8790/x", "", "garbage"])
def test_a_report_about_a_url_that_is_no_peer_changes_nothing(url) -> None:
    s = _seeds()
    assert s.refuse("52:54:00:00:00:99", url, "x") is None and s.done("52:54:00:00:00:99", url, 5) is None
    assert all(not p.refused and p.served_bytes == 0 for p in s.peers.values())


def test_a_node_is_never_sent_to_itself_and_a_peer_is_only_an_address() -> None:
    s = _seeds()
    assert s.pick("52:54:00:00:00:01", ROOT, "rack-a", 10.0).ip == "10.60.2.10"
    with pytest.raises(ValueError):
        s.offer("52:54:00:00:00:05", "evil.example/x", "demo", {"rootfs.squashfs": ROOT}, None, 1.0)


@pytest.mark.parametrize(("text", "ok"), [("", True), ("seed = false", True), ("seed_fanout = 16", True),
                                         ("seed_fanout = 0", False), ("seed = 3", False), ("peers = 4", False)])
def test_the_scale_section(text, ok) -> None:
    if ok:
        c = parse_config(f"[scale]\n{text}")
        assert c.scale.seed == ("false" not in text) and c.scale.seed_fanout == (16 if "16" in text else 4)
    else:
        with pytest.raises(ConfigError):
            parse_config(f"[scale]\n{text}")


def test_node_show_sums_what_a_node_seeded_in_its_last_boot() -> None:
    from ramboot.inventory.store import EventRecord
    from ramboot.inventory.timeline import last_boot
    from ramboot.inventory.views import seeding_out

    mac = "52:54:00:00:00:01"

    def ev(stage: str, source: str, at: float, **detail) -> EventRecord:
        return EventRecord(mac, stage, at, source, detail)

    boot = [ev("dhcp-ack", "server", 1, ip="10.0.0.5", bootfile="undionly.kpxe", firmware="bios"),
            ev("initramfs", "node", 2), ev("verified", "node", 3, sha256=ROOT),
            ev("seeding", "node", 4, sha256=ROOT, port=SEED_PORT), ev("booted", "node", 5)]
    assert seeding_out(last_boot(boot)).model_dump() == {"state": "seeding", "bytes_served": 0, "downloads": 0,
                                                          "reason": ""}
    served = [ev("seed-served", "server", 6 + i, to="x", bytes=1000, total_bytes=1000 * (i + 1)) for i in range(3)]
    forged = [ev("seed-served", "node", 9, bytes=10**12)]  # a node cannot report what it served
    got = seeding_out(last_boot(boot + served + forged))
    assert (got.state, got.bytes_served, got.downloads) == ("seeding", 3000, 3)
    got = seeding_out(last_boot(boot + served + [ev("seed-skipped", "server", 10, by="y", reason="sha256 mismatch")]))
    assert (got.state, got.reason) == ("skipped", "sha256 mismatch")
    assert seeding_out(last_boot(boot[:3])) is None


def test_the_server_redirects_only_to_a_peer_that_accepts_a_connection() -> None:
    """`_answers`: a listener on the seeding port is a live peer; a refused connection (a node
    that shut down) is not, within CHECK_TIMEOUT, so no node is sent to it."""
    import asyncio
    import socket

    from ramboot.server.http_files import CHECK_TIMEOUT, _answers

    with socket.socket() as lsn:
        lsn.bind(("127.0.0.2", SEED_PORT))
        lsn.listen()

        async def both() -> tuple[bool, bool, float]:
            loop = asyncio.get_running_loop()
            live = await _answers("127.0.0.2")
            t0 = loop.time()
            dead = await _answers("127.0.0.3")
            return live, dead, loop.time() - t0

        live, dead, took = asyncio.run(both())
    assert live and not dead and took <= CHECK_TIMEOUT + 0.2


def test_an_ipv6_peer_is_named_in_brackets_and_its_reports_match() -> None:
    s = Seeds(2)
    s.offer("52:54:00:00:00:06", "fd00:172:22:33::106", "demo", {"rootfs.squashfs": ROOT}, None, 1.0)
    peer = s.pick("52:54:00:00:00:07", ROOT, None, 2.0)
    url = f"http://[fd00:172:22:33::106]:{SEED_PORT}/images/demo/rootfs.squashfs"
    assert peer is not None and peer.url("rootfs.squashfs") == url
    assert s.done("52:54:00:00:00:07", url, 5) is peer and peer.served_bytes == 5


def test_a_dracut_image_is_redirected_only_for_a_client_that_declares_its_fall_back(data_dir) -> None:
    """A dracut initrd built before ramboot's module fetched the root itself (stock livenet) would
    mount whatever a peer sent: its downloads stay the server's. ramboot's module sends
    X-Ramboot-Fallback: 1, and gets the peer, as ramboot's initramfs does; `?seed=0` never does."""
    import socket
    import subprocess
    import time

    from conftest import write_fake_image
    from httpserver import LiveServer
    from ramboot.server.http_context import CTX
    from ramboot.server.seeding import FALLBACK_HEADER

    m = write_fake_image(data_dir, "demo")
    m.initramfs = "dracut"
    (data_dir / "images" / "demo" / "image.toml").write_text(m.to_toml())
    srv = LiveServer(data_dir)
    try:
        ip = "127.0.0.77"
        with socket.socket() as lsn:  # the peer's seeding port accepts (the server checks before a redirect)
            lsn.bind((ip, SEED_PORT))
            lsn.listen()
            seeds = srv.server.runner.app[CTX].seeds
            sha = m.files["rootfs.squashfs"].sha256
            srv.run(seeds.offer, "52:54:00:00:00:77", ip, "demo", {"rootfs.squashfs": sha}, None, time.time())

            def status(*args: str) -> tuple[str, str]:
                p = subprocess.run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                                    *args], capture_output=True, text=True, timeout=20)
                code, _, loc = p.stdout.partition(" ")
                return code, loc

            root = f"{srv.base}/images/demo/rootfs.squashfs"
            assert status(root) == ("200", "")
            peer = f"http://{ip}:{SEED_PORT}/images/demo/rootfs.squashfs"
            assert status("-H", f"{FALLBACK_HEADER}: 1", root) == ("302", peer)
            assert status("-H", f"{FALLBACK_HEADER}: 1", root + "?seed=0") == ("200", "")
    finally:
        srv.close()
