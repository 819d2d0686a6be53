"""The seed's own workstation: a libvirt network without DHCP (as `virsh net-define` makes it),
`ramboot serve` on its bridge, and a blank domain made with `virt-install --pxe`, booted to its
RAM root and powered through the `libvirt:` driver. libvirtd is the test's own (its network
namespace and a mount namespace of its own: docs/power.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ramboot.lab.bmc import start_libvirtd, wait_booted
from ramboot.lab.netns import Lab
from ramboot.lab.server import LAB_KERNEL_ARGS, link_image, ramboot_cmd, start_server
from ramboot.lab.vm import random_mac
from test_e2e_lab import ARTIFACTS, built, shared_dir  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.vm, pytest.mark.netns]

NETWORK = """<network>
  <name>ramboot-ws</name>
  <bridge name='rbws0' stp='off' delay='0'/>
  <ip address='172.22.34.1' netmask='255.255.255.0'/>
</network>
"""


@pytest.mark.timeout(900)
def test_virt_install_pxe_domain_boots_from_ramboot_on_a_libvirt_network(request, tmp_path: Path,
                                                                        built) -> None:  # noqa: F811
    import time

    if shutil.which("virt-install") is None:
        pytest.fail("virt-install is missing: make setup installs it (Debian virtinst)")
    image, accel = built
    lab = Lab(ns=f"rbws-{tmp_path.name}"[:30], root=tmp_path)
    request.addfinalizer(lab.teardown)
    lab.create()
    link_image(image, lab.data_dir, "demo")
    daemon = start_libvirtd(lab, tmp_path / "libvirt")

    def ns(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", lab.ns, *argv], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    (tmp_path / "net.xml").write_text(NETWORK)
    made = ns("virsh", "-c", daemon.uri, "net-create", str(tmp_path / "net.xml"))
    assert made.returncode == 0, made.stderr
    config = tmp_path / "ramboot.toml"
    config.write_text(f'data_dir = "{lab.data_dir}"\n[network]\ninterface = "rbws0"\naddress = "172.22.34.1"\n'
                      '[dhcp]\nmode = "full"\nrange = "172.22.34.100-172.22.34.200"\n'
                      f'[boot]\nkernel_args = "{LAB_KERNEL_ARGS}"\n')
    base = start_server(lab, config, tmp_path / "serve.log")
    request.addfinalizer(lambda: ARTIFACTS.mkdir(parents=True, exist_ok=True) or shutil.copyfile(
        tmp_path / "serve.log", ARTIFACTS / "workstation.serve.log"))
    mac, name = random_mac(), "ws-node"
    add = ns(*ramboot_cmd(), "node", "add", mac, "--image", "demo", "--bmc", f"libvirt:{name}?uri={daemon.uri}",
             "--config", str(config))
    assert add.returncode == 0, add.stderr
    since = time.time()
    inst = ns("virt-install", "--connect", daemon.uri, "--name", name, "--pxe", "--disk", "none",
              "--network", f"network=ramboot-ws,mac={mac},model=virtio", "--memory", "1024", "--vcpus", "1",
              "--virt-type", "kvm" if accel == "kvm" else "qemu", "--osinfo", "detect=on,require=off",
              "--graphics", "none", "--serial", f"file,path={tmp_path / 'console.log'}", "--noautoconsole",
              timeout=300)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    lab.adopt(f"vm-{mac}", daemon.root / "run" / "qemu" / f"{name}.pid", f"guest={name},")
    ok, last = wait_booted(lab, mac, since, 300, base)
    if (tmp_path / "console.log").exists():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "console.log", ARTIFACTS / "workstation.console.log")
    assert ok, f"the virt-install domain did not reach its RAM root: {last}"
    status = ns(*ramboot_cmd(), "power", "status", mac, "--config", str(config))
    assert status.stdout.strip() == f"{mac} on", status.stdout + status.stderr
    off = ns(*ramboot_cmd(), "power", "off", mac, "--config", str(config))
    assert off.returncode == 0, off.stdout + off.stderr
    assert ns("virsh", "-c", daemon.uri, "domstate", name).stdout.strip() == "shut off"
