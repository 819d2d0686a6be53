"""Booted nodes seed their peers, with real VMs behind a rate-limited server (`tc tbf` on the
lab bridge: what the server sends; VM-to-VM traffic is forwarded by the bridge, not limited).

One lab, in order:
1. A fake peer (a namespace with a real DHCP lease that reports `seeding` for the right root)
   serves altered bytes: the first VM is sent to it, refuses the bytes by their sha256, reports
   it, and boots from the server (`?seed=0`); the fake peer is skipped from then on.
2. The first VM seeds its verified root from RAM; the next three VMs take their root from a peer.
3. The server sent the root image once (the first VM's fall-back): less than twice the image,
   by its own interface counter and by its metrics; every root was verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dhcp_netns import need
from ramboot.images.manifest import FileEntry, load_manifest, sha256_file
from ramboot.lab.server import lab_config_text, link_image, ramboot_cmd, start_server
from ramboot.server.seeding import SEED_PORT
from test_e2e_lab import ARTIFACTS, LabRun, _explain, built, shared_dir  # noqa: F401  (session fixtures)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]


def _fake_peer(run: LabRun, work: Path, root: Path) -> tuple[str, str]:
    """A namespace on the bridge that leases an address like a node, reports `seeding` for the
    image's root, and serves that root with one byte changed on SEED_PORT. Returns (its MAC, its URL)."""
    need("busybox", "curl", "python3")
    ns = f"{run.lab.ns}-fp"[:40]
    run.lab.add_peer(ns, "198.51.100.1/32")  # no lab address until its lease
    script = work / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/24" dev "$interface" && echo "$ip" > '
                      f'{work / "fake.ip"}\nexit 0\n')
    script.chmod(0o755)
    subprocess.run(["ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "6", "-T", "1",
                    "-s", str(script)], check=True, capture_output=True, timeout=30)
    ip = (work / "fake.ip").read_text().strip()
    mac = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/address"], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = work / "fake-peer" / "images" / "demo"
    tree.mkdir(parents=True)
    data = bytearray(root.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte off: only the sha256 can tell
    (tree / "rootfs.squashfs").write_bytes(bytes(data))
    run.lab.spawn("fake-peer", ["python3", "-m", "http.server", str(SEED_PORT), "--bind", ip,
                                "--directory", str(work / "fake-peer")], log=work / "fake-peer.log", netns=ns)
    sha = hashlib.sha256(root.read_bytes()).hexdigest()
    body = json.dumps({"stage": "seeding", "detail": {"sha256": sha, "port": SEED_PORT}})
    https = run.base.replace("http://", "https://")
    p = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sk", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                        "-H", "Content-Type: application/json", "--data", body,
                        f"{https}/api/v1/nodes/{mac}/events"], capture_output=True, text=True, timeout=20)
    assert p.stdout == "202", (p.stdout, p.stderr)
    return mac, f"http://{ip}:{SEED_PORT}/images/demo/rootfs.squashfs"


def _bigger_root(data_dir: Path, extra_mib: int = 40) -> None:
    """The demo root plus `extra_mib` of random bytes (incompressible), so the root outweighs the
    kernel and initrd as a real one does; files replaced, never written through (they may be hard links)."""
    img = data_dir / "images" / "demo"
    work = data_dir.parent / "bigger-root"
    subprocess.run(["unsquashfs", "-q", "-d", str(work), str(img / "rootfs.squashfs")], check=True, capture_output=True)
    (work / "var").mkdir(exist_ok=True)
    (work / "var" / "ballast").write_bytes(os.urandom(extra_mib << 20))
    new = img / "rootfs.squashfs.new"
    subprocess.run(["mksquashfs", str(work), str(new), "-comp", "zstd", "-noappend", "-quiet", "-all-root"],
                   check=True, capture_output=True)
    os.replace(new, img / "rootfs.squashfs")
    m = load_manifest(data_dir, "demo")
    m.files["rootfs.squashfs"] = FileEntry(size=(img / "rootfs.squashfs").stat().st_size,
                                           sha256=sha256_file(img / "rootfs.squashfs"))
    (img / "image.toml.new").write_text(m.to_toml())
    os.replace(img / "image.toml.new", img / "image.toml")


def _boot_chain(run: LabRun, n: int) -> list:
    """`n` VMs one after another, each started once the one before has booted, and all kept
    running (seeding) until the last has booted."""
    boots: list = []

    def step() -> None:
        if len(boots) < n:
            boots.append(None)
            i = len(boots) - 1
            boots[i] = run.boot(on_booted=step, memory_mb=512)

    step()
    return [b for b in boots if b is not None]


def _tx_bytes(run: LabRun) -> int:
    out = subprocess.run(["ip", "netns", "exec", run.lab.ns, "cat", f"/sys/class/net/{run.lab.bridge}/statistics/tx_bytes"],
                         check=True, capture_output=True, text=True).stdout
    return int(out)


def refused_then_server(run: LabRun, mac: str, fake_mac: str, fake_url: str) -> list[dict]:
    """The node refused the fake peer's altered bytes by their sha256 and took the server's own
    copy (`?seed=0`), and the peer was skipped from then on; the node's events."""
    ev = run.events(mac)
    refused = [e for e in ev if e["stage"] == "seed-refused"]
    assert refused and refused[0]["detail"]["url"] == fake_url, ev
    assert refused[0]["detail"]["reason"] == "sha256 mismatch"
    done = [e for e in ev if e["stage"] == "download-done"]
    assert done[-1]["detail"]["url"].endswith("/images/demo/rootfs.squashfs?seed=0"), done  # the server, itself
    assert any(e["stage"] == "seed-skipped" for e in run.events(fake_mac))
    return ev


@pytest.mark.timeout(1200)
def test_later_nodes_take_their_root_from_a_peer_and_altered_bytes_are_refused(built, tmp_path: Path) -> None:  # noqa: F811
    need("tc")
    run = LabRun("seed", tmp_path / "lab", built[0], built[1])
    try:
        run.lab.create()
        link_image(run.image, run.lab.data_dir, "demo")
        _bigger_root(run.lab.data_dir)
        run.config.write_text(lab_config_text(run.lab, run.lab.data_dir))
        run.base = start_server(run.lab, run.config, run.lab.log_file)
        # The server's side of the bridge, limited: what the server itself sends (tbf; no netem here).
        subprocess.run(["ip", "netns", "exec", run.lab.ns, "tc", "qdisc", "add", "dev", run.lab.bridge, "root", "tbf",
                        "rate", "200mbit", "burst", "256kb", "latency", "200ms"], check=True, capture_output=True)
        root = run.lab.data_dir / "images" / "demo" / "rootfs.squashfs"
        size = root.stat().st_size
        fake_mac, fake_url = _fake_peer(run, tmp_path, root)
        tx0, sent0 = _tx_bytes(run), run.metric("ramboot_http_bytes_total", kind="rootfs")

        boots = _boot_chain(run, 4)
        assert len(boots) == 4 and all(r.ok for r in boots), "\n".join(_explain(r) for r in boots)
        first, later = boots[0], boots[1:]
        ev = refused_then_server(run, first.mac, fake_mac, fake_url)
        assert any(e["stage"] == "seeding" for e in ev), ev

        for r in later:
            ev = run.events(r.mac)
            done = [e for e in ev if e["stage"] == "download-done"]
            assert done and f":{SEED_PORT}/images/demo/rootfs.squashfs" in done[-1]["detail"]["url"], done
            assert "seed=0" not in done[-1]["detail"]["url"] and fake_url != done[-1]["detail"]["url"]
            assert any(e["stage"] == "verified" for e in ev), ev
        served = [e for e in run.events(first.mac) if e["stage"] == "seed-served"]
        assert served and served[-1]["detail"]["total_bytes"] >= size, served
        show = subprocess.run([*ramboot_cmd(), "node", "show", first.mac, "--config", str(run.config)],
                              capture_output=True, text=True, timeout=60)
        seeded = re.search(r"^seeding: seeding, (\d+) bytes served in (\d+) downloads", show.stdout, re.M)
        assert seeded and int(seeded[1]) >= 2 * size and int(seeded[2]) >= 2, show.stdout + show.stderr

        sent = run.metric("ramboot_http_bytes_total", kind="rootfs") - sent0
        tx = _tx_bytes(run) - tx0
        image = sum(f.stat().st_size for f in (run.lab.data_dir / "images" / "demo").iterdir())
        assert sent < 2 * size, (sent, size)  # the first VM's fall-back alone
        # Four boots' kernels and initrds and one root, framing included: less than twice the
        # image (without seeding it is four roots, far above).
        assert tx < 2 * image, (tx, image, size)
        assert run.metric("ramboot_seed_redirects_total") >= 4  # three roots from peers, and the refused one
        assert run.metric("ramboot_seed_refused_total") == 1
        assert run.metric("ramboot_seed_bytes_total") >= 2 * size
    finally:
        run.lab.teardown()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if run.lab.log_file.exists():
            shutil.copyfile(run.lab.log_file, ARTIFACTS / "seed.serve.log")
