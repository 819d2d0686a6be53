"""Per-node identity on a real boot: a blank VM PXE-boots through `ramboot serve`, and its root
has the hostname, /etc/hosts, authorized_keys and host key the server keeps for it; a second
boot has the same host key and forgets what the first boot wrote.

The root is ramboot's built-in busybox root whose rcS prints what it found, so the console
shows it. (The Debian root with sshd, reached over SSH, is tests/test_debian_node_vm.py.)
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ramboot.images.rootfs import builtin_tree
from ramboot.lab.vm import random_mac
from test_e2e_lab import LabRun, _explain
from vm_cache import accel_for, build_once, shared_build

pytestmark = [pytest.mark.vm, pytest.mark.netns]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMeKh7JtyJb9Q0FvXx8sQZ0aT1o3i1rSg6o5vI9wq2Xn test@ramboot"
PROBE = r"""
echo "identity: hostname $(hostname)" > /dev/console
sed 's/^/identity: hosts /' /etc/hosts > /dev/console
k=/root/.ssh/authorized_keys
echo "identity: keys $(cat $k 2>/dev/null | wc -l) $(stat -c %a $k)" > /dev/console
echo "identity: hostkey $(sha256sum /etc/ssh/ssh_host_ed25519_key.pub | cut -c1-16)" > /dev/console
echo "identity: machine-id $(cat /etc/machine-id)" > /dev/console
if [ -e /root/written-by-the-first-boot ]; then echo "identity: remembered" > /dev/console
else echo "identity: fresh" > /dev/console; fi
echo x > /root/written-by-the-first-boot
"""


@pytest.fixture(scope="session")
def probe_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The built-in root with the probe in its rcS, built once per run through the CLI."""
    with shared_build(tmp_path_factory, "identity-image") as root:
        tree = root / "tree"
        if not tree.exists():
            tree.mkdir()
            builtin_tree(tree)
            rcs = tree / "etc/init.d/rcS"
            rcs.write_text(rcs.read_text().replace("/usr/lib/ramboot/booted", PROBE + "/usr/lib/ramboot/booted"))
        img = build_once(root / "data", "probe", "--rootfs", str(tree))
        return img, accel_for(root, img / "vmlinuz")


def _probe(console: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^identity: (\S+) ?(.*)$", console.replace("\r", ""), re.M):
        out.setdefault(m.group(1), []).append(m.group(2).strip())
    return out


def test_identity_reaches_the_node_and_the_host_key_stays(request, tmp_path: Path, probe_image) -> None:
    run = LabRun("identity", tmp_path, *probe_image)
    request.addfinalizer(run.close)
    run.start()
    keyfile = tmp_path / "id.pub"
    keyfile.write_text(KEY + "\n")
    mac, peer = random_mac(), random_mac()
    run.node_add(mac, "--hostname", "ident-1", "--ssh-key", str(keyfile))
    run.node_add(peer, "--hostname", "ident-peer", "--ip", "172.22.33.77")
    first = run.boot("bios", mac)
    assert first.ok, _explain(first)
    one = _probe(first.console_log.read_text(errors="replace"))
    assert one["hostname"] == ["ident-1"], one
    assert "172.22.33.77\tident-peer" in one["hosts"] and "127.0.1.1\tident-1" in one["hosts"], one
    assert one["keys"] == ["1 600"], one
    assert "fresh" in one and "remembered" not in one, one
    second = run.boot("bios", mac)
    assert second.ok, _explain(second)
    two = _probe(second.console_log.read_text(errors="replace"))
    assert two["hostkey"] == one["hostkey"] and two["machine-id"] == one["machine-id"], (one, two)
    assert "fresh" in two and "remembered" not in two, two  # RAM only: nothing of the first boot is left
    overlay = [e for e in run.events(mac) if e["stage"] == "overlay"]
    assert len(overlay) == 2 and overlay[0]["detail"]["sha256"] == overlay[1]["detail"]["sha256"], overlay


def test_a_forged_chaddr_gets_no_secret_while_the_node_gets_its_own(request, tmp_path: Path, probe_image) -> None:
    """Issue 23's VM case: a second client on the same bridge takes a lease for the node's MAC under
    a client id of its own. It gets no credential, no overlay and no report in; the node boots with
    its identity; the node's timeline shows the refusals, and no boot the node did not make."""
    import json
    import subprocess
    import sys

    from ramboot.config import load_config

    run = LabRun("forged", tmp_path, *probe_image)
    request.addfinalizer(run.close)
    run.start()
    mac = random_mac()
    run.node_add(mac, "--hostname", "trusted-1")
    peer = f"{run.lab.ns}-fg"[:40]
    run.lab.add_peer(peer, "169.254.77.77/16")
    https_port = str(load_config(run.config).http.https_port)
    forger = [sys.executable, str(Path(__file__).parent / "dhcp_forger.py"), "eth0", mac, "172.22.33.2", https_port]

    def forge() -> dict:
        out = subprocess.run(["ip", "netns", "exec", peer, *forger], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    before = forge()
    assert (before["script"], before["token"], before["overlay"], before["report"]) == (200, False, 403, 403), before
    boot = run.boot("bios", mac)
    assert boot.ok, _explain(boot)
    assert _probe(boot.console_log.read_text(errors="replace"))["hostname"] == ["trusted-1"]
    after = forge()
    assert after["ip"] == before["ip"] and (after["token"], after["overlay"]) == (False, 403), after
    deadline = time.monotonic() + 15  # the server flushes its events a moment after the refusal
    while True:
        events = run.events(mac)
        refused = [e for e in events if e["stage"] == "refused"]
        if len(refused) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    stages = [e["stage"] for e in events]
    assert stages.count("overlay") == 1 and stages.count("script") == 1, stages
    assert len(refused) == 2 and {e["detail"]["ip"] for e in refused} == {before["ip"]}, refused
    last = run.api(f"/api/v1/nodes/{mac}")["last_boot"]
    assert last["stage"] == "booted", last
