"""The policy seam: option 93 / 60 / 77 decide the boot program (SPEC, RFC 4578)."""

import pytest

from ramboot.inventory.store import NodeSpec
from ramboot.policy import Client, Firmware

from conftest import write_fake_image

MAC = "52:54:00:12:34:56"


@pytest.mark.parametrize(
    "client, firmware, filename, http",
    [
        (Client(MAC, arch=0, vendor_class="PXEClient:Arch:00000:UNDI:002001"), Firmware.BIOS, "undionly.kpxe", False),
        (Client(MAC, arch=7, vendor_class="PXEClient:Arch:00007:UNDI:003016"), Firmware.UEFI, "snponly.efi", False),
        (Client(MAC, arch=9, vendor_class="PXEClient:Arch:00009:UNDI:003016"), Firmware.UEFI, "snponly.efi", False),
        (Client(MAC, arch=16, vendor_class="HTTPClient:Arch:00016:UNDI:003001"), Firmware.UEFI_HTTP,
         "http://172.22.33.2/snponly.efi", True),
        (Client(MAC, arch=0, vendor_class="PXEClient:Arch:00000", user_class="iPXE", ipxe=True), Firmware.IPXE,
         "http://172.22.33.2/boot/52-54-00-12-34-56.ipxe", False),
        (Client(MAC, arch=7, vendor_class="PXEClient:Arch:00007", ipxe=True), Firmware.IPXE,
         "http://172.22.33.2/boot/52-54-00-12-34-56.ipxe", False),
        (Client(MAC), Firmware.BIOS, "undionly.kpxe", False),
    ],
)
def test_boot_file_by_firmware(make_booter, client, firmware, filename, http):
    booter = make_booter()
    assert client.firmware is firmware
    bf = booter.boot_file(client)
    assert (bf.filename, bf.http) == (filename, http)


def test_ipxe_never_gets_a_loader_again(make_booter):
    """No chainload loop: whatever the arch, a client that is iPXE gets its script."""
    booter = make_booter()
    for arch in (0, 6, 7, 9, 16):
        bf = booter.boot_file(Client(MAC, arch=arch, user_class="iPXE"))
        assert bf.filename.endswith(".ipxe")


def test_pxelinux_loader_for_bios_node(make_booter):
    booter = make_booter()
    booter.store.put_node(NodeSpec(mac=MAC, image="demo", loader="pxelinux"))
    assert booter.boot_file(Client(MAC, arch=0)).filename == "pxelinux.0"
    # UEFI has no pxelinux.0: it still gets iPXE.
    assert booter.boot_file(Client(MAC, arch=7)).filename == "snponly.efi"


def test_unknown_nodes_ignore(make_booter):
    booter = make_booter('[boot]\nunknown_nodes = "ignore"')
    assert booter.boot_file(Client(MAC, arch=0)) is None
    assert booter.ipxe_script(MAC) is None
    booter.store.put_node(NodeSpec(mac=MAC, image="demo"))
    assert booter.boot_file(Client(MAC, arch=0)).filename == "undionly.kpxe"


def test_uuid_identifies_a_node_with_a_new_nic(make_booter):
    booter = make_booter('[boot]\nunknown_nodes = "ignore"')
    booter.store.put_node(NodeSpec(mac=MAC, image="big", uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"))
    plan = booter.plan("52:54:00:aa:bb:cc", uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    assert plan is not None and plan.image == "big"


def test_ipxe_script_carries_root_url_and_sha(make_booter, data_dir):
    m = write_fake_image(data_dir, "demo")
    booter = make_booter('[http]\nport = 8080')
    booter.store.put_node(NodeSpec(mac=MAC, image="demo", hostname="n1", kernel_args="quiet"))
    script = booter.ipxe_script(MAC)
    assert script.startswith("#!ipxe\n")
    assert "kernel http://172.22.33.2:8080/images/demo/vmlinuz initrd=initrd.img" in script
    assert "initrd http://172.22.33.2:8080/images/demo/initrd.img" in script
    assert "ramboot.url=http://172.22.33.2:8080/images/demo/rootfs.squashfs" in script
    assert f"ramboot.sha256={m.files['rootfs.squashfs'].sha256}" in script
    assert "BOOTIF=01-52-54-00-12-34-56" in script
    assert "ramboot.hostname=n1" in script and " quiet" in script


def test_pxelinux_config_uses_live_root(make_booter, data_dir):
    write_fake_image(data_dir, "demo")
    booter = make_booter()
    booter.store.put_node(NodeSpec(mac=MAC, image="demo", loader="pxelinux"))
    cfg = booter.pxelinux_config(MAC)
    assert "KERNEL images/demo/vmlinuz" in cfg
    assert "INITRD images/demo/initrd.img" in cfg
    assert "root=live:http://172.22.33.2/images/demo/rootfs.squashfs" in cfg
    default = booter.pxelinux_config(None)
    assert "BOOTIF" not in default.split("APPEND", 1)[1].split("\n")[0]
    assert "IPAPPEND 2" in default


def test_dracut_image_gets_the_livenet_command_line(make_booter, data_dir):
    m = write_fake_image(data_dir, "classic")
    m.initramfs = "dracut"
    (data_dir / "images" / "classic" / "image.toml").write_text(m.to_toml())
    booter = make_booter()
    booter.store.put_node(NodeSpec(mac=MAC, image="classic"))
    script = booter.ipxe_script(MAC)
    assert "root=live:http://172.22.33.2/images/classic/rootfs.squashfs" in script
    assert "rd.neednet=1 ip=dhcp rd.live.overlay.overlayfs=1" in script
    assert "ramboot.url=" not in script
