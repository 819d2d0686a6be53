"""End to end, UEFI beyond plain PXE: Secure Boot through Debian's signed shim and GRUB,
OVMF's own UEFI HTTP boot, and OVMF in proxy mode beside a site DHCP server.

Real peers only: Debian's OVMF (with Microsoft's keys for Secure Boot), shim,
GRUB and kernel, a real `ramboot serve` configured as a user would, and dnsmasq
as the site's DHCP server. The lab helpers and the image come from test_e2e_lab.
"""

from __future__ import annotations

from pathlib import Path

from test_e2e_lab import LabRun, _explain, _stages, built, lab_run, pytestmark, random_mac, shared_dir  # noqa: F401


def _served(lab_run: LabRun, mac: str) -> list[tuple[str, str, str]]:
    # GRUB asks TFTP for rooted names (`/grub/grub.cfg`): the events keep what it asked.
    return [(e["stage"], str(e["detail"].get("file")).removeprefix("/"), e["detail"].get("protocol") or "tftp")
            for e in lab_run.events(mac) if e["stage"] in ("loader", "script", "kernel", "initrd", "rootfs")]


def test_secure_boot_through_shim_and_grub(lab_run: LabRun) -> None:
    """OVMF with Secure Boot enforcing: shim, GRUB, the per-node grub.cfg, the signed
    kernel and the initrd over TFTP, then the RAM root, which reads Secure Boot as on."""
    lab_run.start()
    mac = random_mac()
    lab_run.node_add(mac, "--loader", "grub", "--hostname", "sb-node")
    r = lab_run.boot("uefi", mac, secure_boot=True)
    assert r.ok, _explain(r)
    served = _served(lab_run, mac)
    files = [f for _, f, _ in served]
    for want in ("shimx64.efi", "grubx64.efi", "grub/grub.cfg", "images/demo/vmlinuz", "images/demo/initrd.img"):
        assert want in files, served
    assert any(f.startswith(f"grub/{mac}") and f.endswith(".cfg") for f in files), served
    console = r.console_log.read_text(errors="replace")
    assert "Secure boot enabled" in console, "the kernel should say Secure Boot is on"
    assert "ramboot: secure boot on (efivars)" in console, "the RAM root should read SecureBoot=1 from efivars"
    assert "ramboot.initrd_sha256=" in console
    booted = [e for e in lab_run.events(mac) if e["stage"] == "booted"]
    assert booted and booted[-1]["detail"].get("secure_boot") == "on", booted


def test_secure_boot_refuses_an_unsigned_loader(lab_run: LabRun) -> None:
    """The same firmware, handed iPXE's unsigned snponly.efi (loader ipxe): refused at once."""
    lab_run.start()
    r = lab_run.boot("uefi", secure_boot=True, timeout=180.0, stop_on=("refused",))
    assert not r.ok
    assert r.first("refused"), _explain(r)
    assert ("loader", "snponly.efi", "tftp") in _served(lab_run, r.mac)
    assert not r.first("ipxe") and not r.first("kernel-start"), _explain(r)


def test_uefi_http_boot_reaches_ram_root(lab_run: LabRun) -> None:
    lab_run.start()
    r = lab_run.boot("uefi-http")
    assert r.ok, _explain(r)
    acks = [e["detail"] for e in lab_run.events(r.mac) if e["stage"] == "dhcp-ack"]
    assert any(a.get("firmware") == "uefi-http" and str(a.get("bootfile")).startswith("http://") for a in acks), acks
    assert ("loader", "snponly.efi", "http") in _served(lab_run, r.mac)


def test_ovmf_proxy_mode_beside_site_dhcp(lab_run: LabRun, tmp_path: Path) -> None:
    """dnsmasq hands out addresses only; OVMF's PXE takes the boot from ramboot's proxyDHCP."""
    leases = lab_run.start_proxy_beside_site_dhcp(tmp_path)
    r = lab_run.boot("uefi")
    assert r.ok, _explain(r)
    assert r.mac in leases.read_text(), "the VM's address should come from the site DHCP server"
    offers = [e["detail"] for e in lab_run.events(r.mac) if e["stage"] == "proxy-offer"]
    assert any(o.get("port") == 4011 for o in offers), offers
    assert "dhcp-ack" not in _stages(lab_run.events(r.mac))
