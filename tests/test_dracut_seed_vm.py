"""Issue 20 on the dracut path: a dracut node seeds its peers, and refuses a bad peer's bytes.

ramboot's dracut module downloads the root itself (its own /sbin/livenetroot, in place of
livenet's) and says so to the server (X-Ramboot-Fallback), so the server redirects it to
seeding peers as it does ramboot's initramfs. One lab, two dracut VMs booted one after the other:
1. A fake peer (test_scale_seed_vm's: a leased namespace that reports `seeding` for the root)
   serves altered bytes. The first VM is sent to it, refuses the bytes by their sha256, reports
   `seed-refused`, and boots from the server itself (`?seed=0`). It then seeds from RAM: busybox
   httpd, started in the pre-pivot hook, outlives systemd's switch-root.
2. The second VM, started once the first has booted (so after the first's switch-root), takes
   its root and modules layer from the first, verifies both, and boots.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ramboot.images.manifest import MODULES, ROOTFS, load_manifest
from ramboot.server.seeding import SEED_PORT
from test_e2e_lab import LabRun, _explain
from test_node_modules_vm import module_images  # noqa: F401  (a fixture)
from test_scale_seed_vm import _fake_peer, refused_then_server

pytestmark = [
    pytest.mark.vm,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]


@pytest.mark.timeout(1500)  # a dracut image built once per run, two systemd initramfs boots under TCG
def test_dracut_node_refuses_a_bad_peer_then_seeds_the_next(module_images: tuple[Path, str],  # noqa: F811
                                                             tmp_path: Path) -> None:
    data, accel = module_images
    m = load_manifest(data, "drm")
    assert m.initramfs == "dracut" and MODULES in m.files
    run = LabRun("dracut-seed", tmp_path / "lab", data / "images/drm", accel)
    try:
        run.start()
        root = run.lab.data_dir / "images" / "demo" / ROOTFS
        fake_mac, fake_url = _fake_peer(run, tmp_path, root)
        boots: list = []

        def step() -> None:  # each VM starts once the one before has booted; all keep running
            if len(boots) < 2:
                boots.append(None)
                i = len(boots) - 1  # the next VM's boot runs inside this one's (on_booted)
                boots[i] = run.boot(on_booted=step)

        step()
        assert len(boots) == 2 and all(r is not None and r.ok for r in boots), "\n".join(
            _explain(r) for r in boots if r is not None)
        first, second = boots
        console = first.console_log.read_text(errors="replace").replace("\r", "")
        assert "ramboot.seed=1" in console and "ramboot: initramfs (dracut) on" in console

        ev = refused_then_server(run, first.mac, fake_mac, fake_url)
        verified = [e for e in ev if e["stage"] == "verified"]
        assert verified and verified[0]["detail"]["sha256"] == m.files[ROOTFS].sha256, ev
        stages = [e["stage"] for e in ev if e["source"] == "node"]
        assert stages.index("seeding") < stages.index("switch-root") < stages.index("booted"), stages

        # The second node's root and modules came from the first, after the first's switch-root.
        ev2 = run.events(second.mac)
        done2 = [e for e in ev2 if e["stage"] == "download-done"]
        peer = f":{SEED_PORT}/images/demo/"
        assert done2 and peer + ROOTFS in done2[-1]["detail"]["url"], done2
        assert fake_url != done2[-1]["detail"]["url"] and "seed=0" not in done2[-1]["detail"]["url"]
        mods2 = [e for e in ev2 if e["stage"] == "modules"]
        assert mods2 and peer + MODULES in mods2[-1]["detail"]["url"], mods2
        assert mods2[-1]["detail"]["sha256"] == m.files[MODULES].sha256
        assert [e["detail"]["sha256"] for e in ev2 if e["stage"] == "verified"] == [m.files[ROOTFS].sha256], ev2
        assert not [e for e in ev2 if e["stage"] == "seed-refused"], ev2
        served = [e for e in run.events(first.mac) if e["stage"] == "seed-served"]
        assert sum(e["detail"]["bytes"] for e in served) >= m.files[ROOTFS].size + m.files[MODULES].size, served
        assert run.metric("ramboot_seed_refused_total") == 1
        assert run.metric("ramboot_seed_redirects_total") >= 3  # the fake peer's root, then root and modules
    finally:
        run.close()
