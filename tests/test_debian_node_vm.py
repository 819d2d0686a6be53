"""A Debian node that people can use: it PXE-boots through `ramboot serve` into a Debian root
with systemd and sshd, and root logs in over SSH with the key given at `node add`, trusting the
node's host key through ramboot's CA alone (`ramboot ssh known-hosts`). Its hostname and
/etc/hosts are the server's, `modprobe` finds the booted kernel's modules; a second boot has
the same host key and forgets the first.

The Debian root is bootstrapped once per run (about a minute) and shared by the xdist workers.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ramboot.lab.server import ramboot_cmd
from ramboot.lab.vm import random_mac
from test_e2e_lab import LabRun, _explain
from vm_cache import accel_for, build_once, shared_build

pytestmark = [pytest.mark.vm, pytest.mark.netns]

NODE_IP, PEER_IP = "172.22.33.150", "172.22.33.151"
REMOTE = ("echo hostname=$(hostname); echo peer=$(grep deb-peer /etc/hosts | tr '\t' ' '); "
          "echo hostkey=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub); "
          "modprobe tun && modprobe bridge && echo modprobe=ok; "
          "if test -e /root/mark; then echo mark=remembered; else echo mark=fresh; fi; touch /root/mark")


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    with shared_build(tmp_path_factory, "debian-node") as root:
        img = build_once(root / "data", "debian", "--rootfs", "debian:bookworm:openssh-server", "--kernel", "debian")
        return img, accel_for(root, img / "vmlinuz")


@pytest.mark.timeout(1200)  # a Debian root built (mmdebstrap) and booted twice under TCG: minutes on a loaded machine
def test_debian_node_ssh_with_its_key_and_a_certified_host_key(request, tmp_path: Path, debian_image) -> None:
    run = LabRun("debian-ssh", tmp_path, *debian_image)
    request.addfinalizer(run.close)
    run.start()
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    mac = random_mac()
    run.node_add(mac, "--hostname", "deb-1", "--ip", NODE_IP, "--ssh-key", f"{key}.pub")
    run.node_add(random_mac(), "--hostname", "deb-peer", "--ip", PEER_IP)
    known = tmp_path / "known_hosts"
    kh = subprocess.run([*ramboot_cmd(), "ssh", "known-hosts", "--config", str(run.config)],
                        capture_output=True, text=True, check=True).stdout
    known.write_text(kh)
    sessions: list[str] = []

    def login() -> None:
        """ssh as root, with StrictHostKeyChecking against the CA line only; sshd may still be starting."""
        deadline, last = time.monotonic() + 90, ""
        while time.monotonic() < deadline:
            p = subprocess.run(["ip", "netns", "exec", run.lab.ns, "ssh", "-i", str(key), "-o", "BatchMode=yes",
                                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                                "-o", "ConnectTimeout=5", f"root@{NODE_IP}", REMOTE],
                               capture_output=True, text=True, timeout=30)
            if p.returncode == 0:
                sessions.append(p.stdout)
                return
            last = p.stderr.strip()
            time.sleep(2)
        sessions.append(f"ssh failed: {last}")

    first = run.boot("bios", mac, on_booted=login)
    assert first.ok, _explain(first)
    second = run.boot("bios", mac, on_booted=login)
    assert second.ok, _explain(second)
    assert len(sessions) == 2 and not any(s.startswith("ssh failed") for s in sessions), sessions
    one, two = (dict(line.split("=", 1) for line in s.splitlines() if "=" in line) for s in sessions)
    assert one["hostname"] == "deb-1" and one["peer"] == f"{PEER_IP} deb-peer", one
    assert one.get("modprobe") == "ok", one  # the booted kernel's modules are in the root
    assert one["hostkey"] == two["hostkey"] and len(one["hostkey"]) > 40, (one, two)  # the same key at every boot
    assert one["mark"] == "fresh" and two["mark"] == "fresh", (one, two)  # nothing of the first boot is left
