"""ramboot boots ramboot: the package and its unit, proved by a diskless provisioning server.

A Debian root built by `ramboot image build --deb` holds the `.deb` of this tree; `--files`
lays on it the inner server's config, a systemd link and network file for its second NIC,
`ramboot.service` enabled, and the busybox demo image to serve. The lab's server PXE-boots
it as a node with a second NIC on another lab's bridge (its own namespace). There systemd
starts `ramboot.service` with the unit's sandboxing (DynamicUser, two capabilities,
ProtectSystem=strict): checked over SSH, from `systemctl show` and the main process's
/proc. That server then PXE-boots a blank VM on the second bridge into its RAM root: the
boot's timeline comes from the inner server's own API, reached from the second namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ramboot.lab.netns import Lab
from ramboot.lab.server import build_image
from ramboot.lab.vm import boot_vm, format_timeline, random_mac
from test_e2e_lab import ARTIFACTS, LabRun, _explain
from vm_cache import accel_for, build_once, deb_once, shared_build

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.timeout(3600),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mmdebstrap)")]

NODE_IP = "172.22.33.160"
INNER_MAC = "52:54:00:bb:00:02"  # the outer node's second NIC (named prov0 by the root's .link file)
INNER_IP, INNER_NET = "10.77.0.2", "10.77.0"
# Read over SSH once the inner server answers: the unit as systemd runs it, and its main process.
REMOTE = r"""
systemctl show ramboot -p ActiveState -p DynamicUser -p ProtectSystem -p AmbientCapabilities \
    -p CapabilityBoundingSet -p NoNewPrivileges -p ExecMainStartTimestampMonotonic
pid=$(systemctl show ramboot -p MainPID --value)
echo "MainPID=$pid"
grep -E '^(Uid|CapEff|NoNewPrivs):' /proc/$pid/status | sed -E 's/:[[:space:]]+/=/; s/[[:space:]]+/ /g'
echo "RootMount=$(awk '$5 == "/" {o = $6} END {print o}' /proc/$pid/mountinfo)"
echo "DataLink=$(readlink /var/lib/ramboot)"
echo "DataOwner=$(stat -c %u /var/lib/private/ramboot)"
echo "Cmdline=$(tr '\0' ' ' < /proc/$pid/cmdline)"
"""
WHY = "systemctl status ramboot --no-pager -l; journalctl -u ramboot --no-pager -n 40; networkctl --no-pager"


@pytest.fixture(scope="session")
def server_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The outer node's image (Debian, the .deb, the inner server's files), its accelerator, the inner API token."""
    deb = deb_once(tmp_path_factory)
    with shared_build(tmp_path_factory, "ramboot-server") as root:
        demo = root / "demo-data"
        if not (demo / "images/demo/image.toml").is_file():
            build_image(demo, "demo", log=root / "demo.log", echo=False)
        token_file = root / "inner-token"
        if not token_file.is_file():
            token_file.write_text(secrets.token_hex(16))
        token = token_file.read_text()
        files = root / "files"
        shutil.rmtree(files, ignore_errors=True)
        inner_files(files, demo / "images/demo", token)
        img = build_once(root / "data", "rbsrv", "--rootfs", "debian:bookworm:openssh-server", "--kernel", "debian",
                         "--deb", str(deb), "--files", str(files))
        return img, accel_for(root, img / "vmlinuz"), token


def inner_files(files: Path, demo: Path, token: str) -> None:
    """What `--files` lays on the outer root: a provisioning server on its second NIC."""
    etc = files / "etc"
    (etc / "ramboot").mkdir(parents=True)
    (etc / "ramboot/ramboot.toml").write_text(
        f'data_dir = "/var/lib/ramboot"\n[network]\ninterface = "prov0"\naddress = "{INNER_IP}"\n'
        f'[dhcp]\nmode = "full"\nrange = "{INNER_NET}.100-{INNER_NET}.150"\n'
        '[boot]\ndefault_image = "demo"\nkernel_args = "console=tty0 console=ttyS0,115200"\n'
        f'[api]\ntoken = "{token}"\n')
    (etc / "systemd/network").mkdir(parents=True)
    (etc / "systemd/network/10-prov.link").write_text(f"[Match]\nMACAddress={INNER_MAC}\n\n[Link]\nName=prov0\n")
    (etc / "systemd/network/10-prov.network").write_text(
        f"[Match]\nName=prov0\n\n[Network]\nAddress={INNER_IP}/24\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n")
    wants = etc / "systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ramboot.service").symlink_to("/lib/systemd/system/ramboot.service")
    # Through the package's /var/lib/ramboot -> private/ramboot: the image lands where the service reads.
    (files / "var/lib/ramboot/images").mkdir(parents=True)
    shutil.copytree(demo, files / "var/lib/ramboot/images/demo")


def test_ramboot_boots_ramboot(request: pytest.FixtureRequest, tmp_path: Path, server_image) -> None:
    img, accel, token = server_image
    listing = subprocess.run(["unsquashfs", "-lc", "-d", "", str(img / "rootfs.squashfs")], capture_output=True,
                             text=True, check=True).stdout
    assert "/usr/lib/ramboot/bin/ramboot" in listing and "/var/lib/private/ramboot/images/demo/vmlinuz" in listing
    outer = LabRun("rbr-outer", tmp_path / "outer", img, accel)
    request.addfinalizer(outer.close)
    second = Lab(ns=f"rbe-{os.getpid()}-rbr-inner", root=tmp_path / "inner", server_ip=f"{INNER_NET}.254")
    request.addfinalizer(second.teardown)
    outer.start()
    second.create()
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    mac = random_mac()
    outer.node_add(mac, "--hostname", "rb-server", "--ip", NODE_IP, "--ssh-key", f"{key}.pub")
    seen: dict = {}

    def ssh(command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", outer.lab.ns, "ssh", "-i", str(key), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                               "-o", "ConnectTimeout=10", f"root@{NODE_IP}", command],
                              capture_output=True, text=True, timeout=timeout)

    def inner_boot() -> None:
        """The outer node is up: wait for its server to answer on the second link, read its unit, boot a VM from it."""
        booted_at = time.monotonic()
        deadline, status = time.monotonic() + 900, 0  # its Python starts slowly under TCG
        while time.monotonic() < deadline and status != 200:
            status, _ = second.http(f"http://{INNER_IP}/api/v1/nodes", timeout=3, token=token)
            time.sleep(2)
        seen["answered"] = status == 200
        seen["answered_after"] = time.monotonic() - booted_at
        for _ in range(5):
            try:
                p = ssh(REMOTE if status == 200 else WHY)
            except subprocess.TimeoutExpired:
                continue
            if p.returncode == 0:
                seen["status"] = p.stdout
                break
            seen["status"] = p.stderr
        if status == 200:
            seen["inner"] = boot_vm(second, "bios", random_mac(), 600, echo=sys.stdout.buffer,
                                    api_base=f"http://{INNER_IP}", api_token=token, accel=accel)

    r = boot_vm(outer.lab, "bios", mac, 600, echo=sys.stdout.buffer, api_base=outer.base, accel=accel,
                memory_mb=2048, on_booted=inner_boot, extra_nics=((second, INNER_MAC),))
    outer.keep(r)
    assert r.ok, _explain(r)
    status = seen.get("status", "")
    assert seen["answered"], f"the inner server never answered on {INNER_IP}:\n{status}"
    unit = dict(ln.split("=", 1) for ln in status.splitlines() if "=" in ln)
    # systemd runs the package's unit with its sandboxing.
    assert unit["ActiveState"] == "active" and unit["DynamicUser"] == "yes", status
    assert unit["ProtectSystem"] == "strict" and unit["NoNewPrivileges"] == "yes", status
    assert set(unit["AmbientCapabilities"].split()) == {"cap_net_bind_service", "cap_net_raw"}, status
    assert set(unit["CapabilityBoundingSet"].split()) == {"cap_net_bind_service", "cap_net_raw"}, status
    assert unit["Cmdline"].split()[1:] == ["/usr/bin/ramboot", "serve", "--config", "/etc/ramboot/ramboot.toml"], status
    uids = unit["Uid"].split()
    assert uids[0] != "0" and len(set(uids)) == 1 and unit["DataOwner"] == uids[0], status  # a dynamic user
    assert int(unit["CapEff"], 16) == (1 << 10) | (1 << 13), status  # CAP_NET_BIND_SERVICE, CAP_NET_RAW only
    assert unit["NoNewPrivs"] == "1" and unit["RootMount"].split(",")[0] == "ro", status
    assert unit["DataLink"] == "private/ramboot", status
    # That server PXE-booted a blank VM on its own link into its RAM root.
    inner = seen["inner"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(inner.console_log, ARTIFACTS / "rbr-inner.console.log")
    (ARTIFACTS / "rbr-inner.timeline.txt").write_text(format_timeline(inner) + "\n")
    assert inner.ok, _explain(inner)
    served = {m.stage for m in inner.marks if m.source == "server"}
    assert {"dhcp-ack", "script", "kernel"} <= served, format_timeline(inner)
    assert inner.first("verified") and inner.first("switch-root"), format_timeline(inner)
    booted = r.first("booted")
    assert booted is not None
    print(f"\nouter node: booted in {booted.at - r.started:.1f} s; its ramboot.service started "
          f"{float(unit['ExecMainStartTimestampMonotonic']) / 1e6:.1f} s after its kernel and answered "
          f"{seen['answered_after']:.1f} s after the node booted; inner VM: RAM root in {inner.seconds:.1f} s\n"
          f"{format_timeline(inner)}")
