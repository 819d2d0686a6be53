"""Issue 19 on the dracut path: a dracut image boots a blank OVMF VM in an IPv6-only lab (no IPv4
address anywhere) through `ramboot serve`. The command line the server renders asks dracut for
SLAAC (`ip=auto6`, as ramboot's initramfs takes its address) and names the server as
`http://[addr]/`; ramboot's module fetches the root, the modules layer and the overlay over IPv6
and reports every stage there; once booted it seeds its root to peers over IPv6 too."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ramboot.images.manifest import MODULES, ROOTFS, load_manifest
from ramboot.lab.netns import PREFIX6
from ramboot.lab.vm import random_mac
from ramboot.server.seeding import SEED_PORT
from test_e2e_lab import LabRun, _explain
from test_node_modules_vm import module_images  # noqa: F401  (a fixture)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

V6 = "http://[fd00:172:22:33::2]/"


@pytest.mark.timeout(1500)  # a dracut image built once per run, and one systemd initramfs over UEFI under TCG
def test_dracut_image_boots_over_ipv6_only(module_images: tuple[Path, str], tmp_path: Path) -> None:  # noqa: F811
    data, accel = module_images
    m = load_manifest(data, "drm")
    assert m.initramfs == "dracut"
    run = LabRun("dracut-v6", tmp_path, data / "images/drm", accel)
    try:
        run.lab.ipv6 = "only"
        run.start()
        assert run.base.startswith(V6.rstrip("/"))
        seeded: list[subprocess.CompletedProcess] = []

        def fetch_from_the_seeder() -> None:  # while the VM still runs (boot() stops it after)
            # The booted node (after switch-root) serves its verified root at its SLAAC address
            # (the prefix and the MAC's EUI-64), as a peer sent there would fetch it.
            octets = bytes.fromhex(run_mac.replace(":", ""))
            eui = bytes([octets[0] ^ 2, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
            addr = ipaddress.IPv6Network(PREFIX6)[int.from_bytes(eui, "big")]
            seeded.append(subprocess.run(["ip", "netns", "exec", run.lab.ns, "curl", "-g", "-sf", "-m", "60",
                                          f"http://[{addr}]:{SEED_PORT}/images/demo/{ROOTFS}"],
                                         capture_output=True, timeout=90))

        run_mac = random_mac()
        r = run.boot("uefi", run_mac, timeout=900.0, on_booted=fetch_from_the_seeder)
        assert r.ok, _explain(r)
        console = r.console_log.read_text(errors="replace").replace("\r", "")
        assert f"root=live:{V6}images/demo/{ROOTFS}" in console and " ip=auto6 " in console, console[-3000:]
        assert "ip=dhcp" not in console
        ev = run.events(r.mac)
        stages = [e["stage"] for e in ev if e["source"] == "node"]
        assert stages[:4] == ["initramfs", "download-start", "download-done", "verified"], stages
        assert {"overlay", "modules", "switch-root", "booted"} <= set(stages), stages
        done = next(e for e in ev if e["stage"] == "download-done")
        assert done["detail"]["url"].startswith(V6) and done["detail"]["bytes"] == m.files[ROOTFS].size, done
        mods = next(e for e in ev if e["stage"] == "modules")
        assert mods["detail"]["url"].startswith(V6) and mods["detail"]["sha256"] == m.files[MODULES].sha256, mods
        assert next(e for e in ev if e["stage"] == "overlay")["detail"]["files"] > 0
        acks = [e["detail"] for e in ev if e["stage"] == "dhcp-ack"]
        assert acks and all(a.get("family") == 6 for a in acks), acks
        # Seeding over IPv6.
        assert "seeding" in stages, stages
        assert seeded and seeded[0].returncode == 0, seeded
        assert hashlib.sha256(seeded[0].stdout).hexdigest() == m.files[ROOTFS].sha256
    finally:
        run.close()
