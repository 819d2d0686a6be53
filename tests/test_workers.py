"""`[serve] workers = 2`: the real `ramboot serve` in a namespace, HTTP and TFTP spread over two
worker processes, a killed worker restarted while the other serves, the DHCP lease still durable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from dhcp_netns import RANGE, SERVER_IP, NetnsPair, udhcpc

RAMBOOT = [str(Path(sys.executable).with_name("ramboot"))]


def _serve(pair: NetnsPair, tmp: Path, data: Path, extra: str = "") -> tuple[subprocess.Popen, Path, Path]:
    cfg = tmp / "ramboot.toml"
    cfg.write_text(
        f'data_dir = "{data}"\n[network]\ninterface = "{pair.srv_if}"\n'
        f'[dhcp]\nmode = "full"\nrange = "{RANGE}"\n[tftp]\nport = 69\n[http]\nport = 80\n'
        f'[api]\nread_requires_token = false\n[serve]\nworkers = 2\n{extra}'
    )
    log = tmp / "serve.log"
    p = pair.popen(pair.srv_ns, *RAMBOOT, "serve", "--config", str(cfg), stdout=subprocess.DEVNULL,
                   stderr=open(log, "wb"))
    end = time.monotonic() + 60
    while time.monotonic() < end and b"serving on" not in log.read_bytes():
        assert p.poll() is None, log.read_text()
        time.sleep(0.1)
    assert b"serving on" in log.read_bytes(), log.read_text()
    return p, log, cfg


def _pids(log: Path) -> list[int]:
    m = re.findall(r"workers: 2 serving HTTP and TFTP \(pids (\d+), (\d+)\)", log.read_text())
    assert m, log.read_text()
    return [int(x) for x in m[-1]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def _workers_seen(pair: NetnsPair, n: int = 16) -> set[str]:
    """The worker index each of `n` fresh HTTP connections was served by (X-Ramboot-Worker)."""
    seen = set()
    for _ in range(n):
        got = pair.run(pair.cli_ns, "curl", "-sfi", f"http://{SERVER_IP}/images/demo/initrd.img")
        assert got.stdout.endswith("initrd"), got.stdout
        seen.update(re.findall(r"(?im)^x-ramboot-worker: (\d+)\r?$", got.stdout))
    return seen


def _metrics(pair: NetnsPair) -> str:
    """/metrics, answered by the main process through a worker."""
    return pair.run(pair.cli_ns, "curl", "-sf", f"http://{SERVER_IP}/metrics").stdout


def _served_by(text: str, protocol: str) -> dict[str, float]:
    out = {}
    for labels, value in re.findall(r"^ramboot_worker_served_total\{([^}]*)\} (\S+)$", text, re.M):
        if f'protocol="{protocol}"' in labels:
            out[re.findall(r'worker="(\d+)"', labels)[0]] = float(value)
    return out


@pytest.mark.netns
def test_two_workers_spread_http_and_tftp_survive_a_kill_and_keep_leases(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_image(data, "demo")
    pair = NetnsPair()
    try:
        p, log, cfg = _serve(pair, tmp_path, data)
        pids = _pids(log)
        assert all(_alive(pid) for pid in pids)
        lease = udhcpc(pair, tmp_path, "-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001")
        ip = lease["ip"]
        pair.run(pair.cli_ns, "ip", "addr", "add", f"{ip}/24", "dev", pair.cli_if)

        # HTTP: fresh connections land on both workers
        assert _workers_seen(pair) == {"0", "1"}
        # TFTP: both atftp and tftp-hpa; every RRQ comes from a new port, so both workers take some
        for i in range(12):
            out = tmp_path / f"k{i}"
            if i % 2:
                pair.run(pair.cli_ns, "atftp", "-g", "-r", "images/demo/vmlinuz", "-l", str(out), SERVER_IP)
            else:
                pair.run(pair.cli_ns, "tftp", SERVER_IP, "-c", "get", "images/demo/vmlinuz", str(out))
            assert out.read_text() == "kernel"
        # a generated script, decided in a worker
        script = pair.run(pair.cli_ns, "curl", "-sf", f"http://{SERVER_IP}/boot.ipxe").stdout
        assert script.startswith("#!ipxe"), script
        time.sleep(1.5)  # the workers' reports (every 0.5 s)
        text = _metrics(pair)
        tftp = _served_by(text, "tftp")
        assert tftp.get("0", 0) > 0 and tftp.get("1", 0) > 0 and sum(tftp.values()) == 12, tftp
        # the workers' own counters add up under the one name a single process shows
        assert re.search(r"^ramboot_tftp_bytes_total 72\.0$", text, re.M), text  # 12 x "kernel"

        # kill one worker outright: once it is gone the other serves everything (a connection
        # queued at the dying worker's socket is reset: SO_REUSEPORT's way), and it is started again
        os.kill(pids[0], signal.SIGKILL)
        end = time.monotonic() + 10
        # reaped, every thread gone (a leader thread shows Z while the others still hold its sockets)
        while time.monotonic() < end and f"(pid {pids[0]}) exited" not in log.read_text():
            time.sleep(0.05)
        for _ in range(5):
            got = pair.run(pair.cli_ns, "curl", "-sf", f"http://{SERVER_IP}/images/demo/initrd.img")
            assert got.stdout == "initrd"
        end = time.monotonic() + 30
        while time.monotonic() < end and "worker 0 is pid" not in log.read_text():
            time.sleep(0.2)
        assert "worker 0 is pid" in log.read_text(), log.read_text()
        assert p.poll() is None
        new = int(re.findall(r"worker 0 is pid (\d+)", log.read_text())[-1])
        assert new != pids[0] and _alive(new)
        assert _workers_seen(pair) == {"0", "1"}

        # kill -9 of the main process: the workers go with it, and the ACKed lease is durable
        p.kill()
        p.wait(10)
        end = time.monotonic() + 10
        while time.monotonic() < end and (_alive(new) or _alive(pids[1])):
            time.sleep(0.1)
        assert not _alive(new) and not _alive(pids[1])
        from ramboot.config import load_config
        from ramboot.inventory.store import Store

        store = Store.for_config(load_config(cfg))
        try:
            [rec] = store.leases.active()
            assert rec.ip == ip
            # the workers' TFTP and HTTP sends are the node's events, named by its lease in the main process
            stages = [e.stage for e in store.events.of(rec.mac)]
            assert stages.count("kernel") >= 12 and stages.count("initrd") >= 16, stages
        finally:
            store.close()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        pair.close()


@pytest.mark.netns
def test_two_workers_stop_cleanly_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_image(data, "demo")
    pair = NetnsPair()
    try:
        p, log, _ = _serve(pair, tmp_path, data)
        pids = _pids(log)
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, log.read_text()
        assert not any(_alive(pid) for pid in pids)
        text = log.read_text()
        assert "stopped" in text and "Traceback" not in text and "exited with status" not in text, text
    finally:
        pair.close()


@pytest.mark.netns
def test_a_client_cannot_speak_as_a_worker(tmp_path: Path) -> None:
    """The main process believes a worker's client-address and scheme headers (they come over its
    private socket); a client that sends them itself, in any letter case, with a made-up worker
    key, is taken for what it is: plain HTTP from its own address, refused a node's overlay."""
    data = tmp_path / "data"
    write_fake_image(data, "demo")
    pair = NetnsPair()
    try:
        _serve(pair, tmp_path, data)
        lease = udhcpc(pair, tmp_path, "-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001")
        pair.run(pair.cli_ns, "ip", "addr", "add", f"{lease['ip']}/24", "dev", pair.cli_if)
        url = f"http://{SERVER_IP}/overlay/52-54-00-12-34-56.tar"
        for case in (str, str.lower, str.upper):
            forged = [f"{case('X-Ramboot-Peer')}: {SERVER_IP}", f"{case('X-Ramboot-Scheme')}: https",
                      f"{case('X-Ramboot-Worker-Key')}: 00112233445566778899aabbccddeeff"]
            args = [a for h in forged for a in ("-H", h)]
            got = pair.run(pair.cli_ns, "curl", "-s", "-i", *args, url)
            assert got.stdout.startswith("HTTP/1.1 403"), got.stdout
            assert "overlay and reports go over HTTPS" in got.stdout, got.stdout  # the scheme was not believed
            assert re.search(r"(?im)^x-ramboot-worker: [01]\r?$", got.stdout), got.stdout  # a worker took it
            for call in ("report", "seed", "seed-done"):  # the workers' own calls are not on the public port
                internal = pair.run(pair.cli_ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args,
                                    "-X", "POST", f"http://{SERVER_IP}/_worker/{call}")
                assert internal.stdout == "404", (call, internal.stdout)
    finally:
        pair.close()


@pytest.mark.netns
def test_a_root_download_is_sent_by_a_worker_within_the_servers_fan_out(tmp_path: Path) -> None:
    """A seedable root download with no peer to take it: the main process counts it on one of the
    server's `seed_fanout` slots and a worker sends the bytes (they used to be proxied through the
    main process: 7x nginx's CPU per GB). The fan-out holds across both workers (a second download
    waits while the one slot is busy) and the slot comes back when the body is out."""
    import hashlib

    data = tmp_path / "data"
    root = os.urandom(24 << 20)
    write_fake_image(data, "demo", rootfs=root)
    pair = NetnsPair()
    try:
        _, log, _ = _serve(pair, tmp_path, data, extra="[scale]\nseed_fanout = 1\n")
        lease = udhcpc(pair, tmp_path, "-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001")
        pair.run(pair.cli_ns, "ip", "addr", "add", f"{lease['ip']}/24", "dev", pair.cli_if)
        url = f"http://{SERVER_IP}/images/demo/rootfs.squashfs"
        # ramboot's dracut module's header: a download a peer could take, whatever the image's initramfs
        get = ["curl", "-sf", "-H", "X-Ramboot-Fallback: 1", "-w", "%{time_starttransfer}"]
        before = sum(_served_by(_metrics(pair), "http").values())
        slow = pair.popen(pair.cli_ns, *get, "--limit-rate", "4M", "-o", str(tmp_path / "a"), url,
                          stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)  # the slow one holds the one slot
        waited = float(pair.run(pair.cli_ns, *get, "-o", str(tmp_path / "b"), url).stdout)
        assert slow.wait(30) == 0
        again = float(pair.run(pair.cli_ns, *get, "-o", str(tmp_path / "c"), url).stdout)
        assert waited > 1.5, waited  # behind the slow one (6 s at 4 MB/s, less what the socket buffers hold), or SEED_WAIT
        assert again < 1.0, again  # the slot came back
        want = hashlib.sha256(root).hexdigest()
        assert all(hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() == want for n in "abc")
        # a Range request is never a peer's: the worker sends exactly those bytes, without asking
        part = pair.run(pair.cli_ns, "curl", "-sf", "-r", "5000000-5000999", "-o", str(tmp_path / "r"), url)
        assert part.returncode == 0 and (tmp_path / "r").read_bytes() == root[5000000:5001000]
        time.sleep(1.5)  # the workers' reports (every 0.5 s)
        assert sum(_served_by(_metrics(pair), "http").values()) - before == 4  # sent by workers, not the main process
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        pair.close()
