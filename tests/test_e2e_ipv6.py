"""End to end over IPv6: a blank OVMF VM in an IPv6-only lab (no IPv4 address anywhere) reaches its
RAM root through `ramboot serve`: OVMF's own PXE over IPv6 (DHCPv6, TFTP), then iPXE (DHCPv6, HTTP),
then the initramfs (SLAAC, HTTP). Shares the lab harness of test_e2e_lab."""

from __future__ import annotations

import ipaddress
import time

from ramboot.lab.netns import PREFIX6
from test_e2e_lab import LabRun, _explain, _stages, built, lab_run, pytestmark, shared_dir  # noqa: F401

STAGES = ["dhcp-ack", "loader", "script", "kernel", "initrd", "initramfs", "download-start", "rootfs",
          "download-done", "verified", "switch-root", "booted"]


def test_uefi_pxe_over_ipv6_only_reaches_ram_root(lab_run: LabRun) -> None:
    lab_run.lab.ipv6 = "only"
    lab_run.start()
    assert lab_run.base.startswith("http://[fd00:172:22:33::2]")
    r = lab_run.boot("uefi")
    assert r.ok, _explain(r)
    events = lab_run.events(r.mac)
    stages = _stages(events)
    assert [s for s in STAGES if s not in stages] == [], stages
    acks = [e["detail"] for e in events if e["stage"] == "dhcp-ack"]
    assert {a.get("firmware") for a in acks} >= {"uefi", "ipxe"}, acks
    assert all(a.get("family") == 6 for a in acks), acks
    loaders = [e["detail"].get("file") for e in events if e["stage"] == "loader"]
    assert any(str(f).endswith(".efi") for f in loaders), loaders
    node = lab_run.api(f"/api/v1/nodes/{r.mac}")
    deadline = time.monotonic() + 10
    while not (node or {}).get("inventory") and time.monotonic() < deadline:
        time.sleep(0.5)
        node = lab_run.api(f"/api/v1/nodes/{r.mac}")
    assert node and node["inventory"], node
    nic = [n for n in node["inventory"]["report"]["nics"] if n["mac"] == r.mac]
    v6 = [ipaddress.IPv6Address(a) for n in nic for a in n.get("addresses", []) if ":" in a]
    assert any(a in ipaddress.IPv6Network(PREFIX6) for a in v6), nic


def test_uefi_http_boot_over_ipv6_only_reaches_ram_root(lab_run: LabRun) -> None:
    """OVMF's own UEFI HTTP boot: DHCPv6 with vendor class HTTPClient echoed, then http://[addr]/snponly.efi
    (its HTTPv4 attempt times out first: there is no IPv4 in the lab)."""
    lab_run.lab.ipv6 = "only"
    lab_run.start()
    r = lab_run.boot("uefi-http", timeout=480.0)
    assert r.ok, _explain(r)
    events = lab_run.events(r.mac)
    acks = [e["detail"] for e in events if e["stage"] == "dhcp-ack"]
    assert any(a.get("firmware") == "uefi-http" and a.get("bootfile", "").startswith("http://[fd00:172:22:33::2]/")
               for a in acks), acks
    assert "booted" in _stages(events)


def test_dual_stack_bios_ipxe_still_boots(lab_run: LabRun) -> None:
    """Dual stack (`lab up --ipv6`): QEMU's iPXE ROM gets DHCPv4 and DHCPv6 answers and boots as
    before, and the node keeps to one family from its script on."""
    lab_run.lab.ipv6 = "dual"
    lab_run.start()
    r = lab_run.boot("bios")
    assert r.ok, _explain(r)
    events = lab_run.events(r.mac)
    urls = [e["detail"].get("url", "") for e in events if e["stage"] == "download-start"]
    assert urls and all(u.startswith(("http://172.22.33.2/", "http://[fd00:172:22:33::2]/")) for u in urls), urls
    assert "booted" in _stages(events)
