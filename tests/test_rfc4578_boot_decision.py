"""The policy seam: one `Decision` per request, from option 93 / 60 / 77 / 97 (SPEC, RFC 4578).

Table-driven over an in-memory directory: no store, no server.
"""

from __future__ import annotations

import re

import pytest

from conftest import write_fake_image
from directory_fakes import FakeDirectory
from ramboot import names, render
from ramboot.access import discovered
from ramboot.config import parse_config
from ramboot.inventory.records import NodeSpec
from ramboot.policy import Booter
from ramboot.proto.pxe import Client, Firmware

MAC = "52:54:00:12:34:56"
NEW_NIC = "52:54:00:aa:bb:cc"
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
BASE = "http://172.22.33.2"


def booter(data_dir, *nodes: NodeSpec, extra: str = "") -> Booter:
    cfg = parse_config(f'data_dir = "{data_dir}"\n{extra}')
    return Booter(cfg, FakeDirectory(*nodes), "172.22.33.2")


@pytest.mark.parametrize(
    "client, firmware, filename, http",
    [
        (Client(MAC, arch=0, vendor_class="PXEClient:Arch:00000:UNDI:002001"), Firmware.BIOS, "undionly.kpxe", False),
        (Client(MAC, arch=7, vendor_class="PXEClient:Arch:00007:UNDI:003016"), Firmware.UEFI, "snponly.efi", False),
        (Client(MAC, arch=9, vendor_class="PXEClient:Arch:00009:UNDI:003016"), Firmware.UEFI, "snponly.efi", False),
        (Client(MAC, arch=16, vendor_class="HTTPClient:Arch:00016:UNDI:003001"), Firmware.UEFI_HTTP,
         f"{BASE}/snponly.efi", True),
        (Client(MAC, arch=0, vendor_class="PXEClient:Arch:00000", user_class="iPXE", ipxe=True), Firmware.IPXE,
         f"{BASE}/boot/52-54-00-12-34-56.ipxe", False),
        (Client(MAC, arch=7, vendor_class="PXEClient:Arch:00007", ipxe=True), Firmware.IPXE,
         f"{BASE}/boot/52-54-00-12-34-56.ipxe", False),
        (Client(MAC, arch=7, ipxe=True, uuid=UUID), Firmware.IPXE, f"{BASE}/boot/52-54-00-12-34-56/{UUID}.ipxe", False),
        (Client(MAC), Firmware.BIOS, "undionly.kpxe", False),
    ],
)
def test_boot_file_by_firmware(data_dir, client, firmware, filename, http):
    assert client.firmware is firmware
    d = booter(data_dir).decide(client)
    assert d is not None and (d.boot_file.filename, d.boot_file.http) == (filename, http)


def test_ipxe_never_gets_a_loader_again(data_dir):
    """No chainload loop: whatever the arch, a client that is iPXE gets its script."""
    b = booter(data_dir)
    for arch in (0, 6, 7, 9, 16):
        d = b.decide(Client(MAC, arch=arch, user_class="iPXE"))
        assert d is not None and d.boot_file.filename.endswith(".ipxe")


@pytest.mark.parametrize(
    "nodes, client, extra, want",
    [
        # specificity: this MAC, else this UUID, else the default for unknown machines
        ([NodeSpec(MAC, image="by-mac")], Client(MAC), "", ("by-mac", MAC)),
        ([NodeSpec(MAC, image="by-uuid", uuid=UUID)], Client(NEW_NIC, uuid=UUID), "", ("by-uuid", MAC)),
        ([NodeSpec(MAC, image="by-uuid", uuid=UUID), NodeSpec(NEW_NIC, image="by-mac")], Client(NEW_NIC, uuid=UUID),
         "", ("by-mac", NEW_NIC)),
        ([], Client(MAC), "", ("demo", None)),
        ([], Client(MAC), '[boot]\ndefault_image = "other"', ("other", None)),
        ([], Client(MAC), '[boot]\nunknown_nodes = "ignore"', None),
        ([NodeSpec(MAC, image="x", uuid=UUID)], Client(NEW_NIC, uuid=UUID), '[boot]\nunknown_nodes = "ignore"',
         ("x", MAC)),
        ([NodeSpec(MAC, image="x", uuid=UUID)], Client(NEW_NIC), '[boot]\nunknown_nodes = "ignore"', None),
    ],
    ids=["mac", "uuid", "mac-beats-uuid", "unknown", "unknown-default", "ignore", "ignore-but-uuid", "ignore-no-uuid"],
)
def test_which_node_and_image(data_dir, nodes, client, extra, want):
    d = booter(data_dir, *nodes, extra=extra).decide(client)
    assert (None if d is None else (d.image, d.node)) == want


def test_pxelinux_loader_for_bios_node(data_dir):
    b = booter(data_dir, NodeSpec(MAC, image="demo", loader="pxelinux"))
    assert b.decide(Client(MAC, arch=0)).boot_file.filename == "pxelinux.0"
    # UEFI has no pxelinux.0: it still gets iPXE.
    assert b.decide(Client(MAC, arch=7)).boot_file.filename == "snponly.efi"


def test_decision_holds_identity_and_fixed_address(data_dir):
    node = NodeSpec(MAC, image="demo", hostname="n1", ip="172.22.33.50", uuid=UUID)
    d = booter(data_dir, node).decide(Client(NEW_NIC, uuid=UUID, ipxe=True))
    assert (d.mac, d.uuid, d.node, d.hostname, d.fixed_ip) == (NEW_NIC, UUID, MAC, "n1", "172.22.33.50")
    assert d.root_urls == (f"{BASE}/images/demo/rootfs.squashfs",)
    assert d.kernel == names.image_file("demo", "vmlinuz")
    assert "BOOTIF=01-52-54-00-aa-bb-cc" in d.cmdline  # the NIC that booted, not the registered one


def test_uuid_script_name_finds_the_node_the_dhcp_answer_found(data_dir):
    """The DHCP answer hands out a name that carries the UUID; the script request parses it back."""
    b = booter(data_dir, NodeSpec(MAC, image="big", uuid=UUID), extra='[boot]\nunknown_nodes = "ignore"')
    answer = b.decide(Client(NEW_NIC, uuid=UUID, ipxe=True))
    name = answer.boot_file.filename.removeprefix(f"{BASE}/")
    parsed = names.parse(name)
    assert parsed == names.Script(NEW_NIC, UUID)
    again = b.decide(Client(parsed.mac, uuid=parsed.uuid, ipxe=True))
    assert again == answer


def test_ipxe_script_carries_root_url_and_sha(data_dir):
    m = write_fake_image(data_dir, "demo")
    b = booter(data_dir, NodeSpec(MAC, image="demo", hostname="n1", kernel_args="quiet"), extra="[http]\nport = 8080")
    script = render.ipxe_script(b.decide(Client(MAC, ipxe=True)))
    assert script.startswith("#!ipxe\n")
    assert "kernel http://172.22.33.2:8080/images/demo/vmlinuz initrd=ca.cpio initrd=initrd.img" in script
    assert "initrd http://172.22.33.2:8080/images/demo/initrd.img" in script
    assert "ramboot.url=http://172.22.33.2:8080/images/demo/rootfs.squashfs" in script
    assert f"ramboot.sha256={m.files['rootfs.squashfs'].sha256}" in script
    assert "BOOTIF=01-52-54-00-12-34-56" in script
    assert "ramboot.hostname=n1" in script and " quiet" in script


def test_pxelinux_config_uses_live_root(data_dir):
    write_fake_image(data_dir, "demo")
    b = booter(data_dir, NodeSpec(MAC, image="demo", loader="pxelinux"))
    cfg = render.pxelinux_config(b.decide(Client(MAC, arch=0, asks="pxelinux-cfg")))
    assert "KERNEL images/demo/vmlinuz" in cfg
    assert "INITRD ca.cpio,images/demo/initrd.img" in cfg
    assert "root=live:http://172.22.33.2/images/demo/rootfs.squashfs" in cfg
    assert "IPAPPEND" not in cfg
    default = render.pxelinux_config(b.decide(Client("", arch=0, asks="pxelinux-cfg")))
    assert "BOOTIF" not in default.split("APPEND", 1)[1].split("\n")[0]
    assert "IPAPPEND 2" in default


def test_dracut_image_gets_the_livenet_command_line(data_dir):
    m = write_fake_image(data_dir, "classic")
    m.initramfs = "dracut"
    (data_dir / "images" / "classic" / "image.toml").write_text(m.to_toml())
    script = render.ipxe_script(booter(data_dir, NodeSpec(MAC, image="classic")).decide(Client(MAC, ipxe=True)))
    assert "root=live:http://172.22.33.2/images/classic/rootfs.squashfs" in script
    assert "rd.neednet=1 rd.live.overlay.overlayfs=1 ip=dhcp " in script
    assert "ramboot.url=" not in script  # one server: nothing after root=live:
    assert "ramboot.seed=1" in script  # ramboot's livenetroot falls back to the server (docs/scale.md)


def test_dracut_image_booted_over_ipv6_asks_for_slaac_and_ipv6_urls(data_dir):
    """Issue 19: a node that booted over IPv6 gets dracut's `ip=auto6` and URLs naming the server's
    IPv6 address in brackets, never `ip=dhcp` (no DHCPv4 answer may exist)."""
    m = write_fake_image(data_dir, "classic")
    m.initramfs = "dracut"
    (data_dir / "images" / "classic" / "image.toml").write_text(m.to_toml())
    b = booter(data_dir, NodeSpec(MAC, image="classic")).using(FakeDirectory(NodeSpec(MAC, image="classic")),
                                                               server_ip="fd00:172:22:33::2")
    script = render.ipxe_script(b.decide(Client(MAC, ipxe=True)))
    assert "root=live:http://[fd00:172:22:33::2]/images/classic/rootfs.squashfs" in script
    assert " ip=auto6 " in script and "ip=dhcp" not in script
    assert "ramboot.server=http://[fd00:172:22:33::2]" in script or "ramboot.server=https://[fd00:172:22:33::2]" in script


def test_entry_script_chains_by_uuid_then_mac(data_dir):
    script = render.entry_script(BASE)
    assert "isset ${uuid} && chain http://172.22.33.2/boot/${netX/mac:hexhyp}/${uuid}.ipxe ||" in script
    assert "chain http://172.22.33.2/boot/${netX/mac:hexhyp}.ipxe || shell" in script


def test_discovery_is_policy(data_dir):
    b = booter(data_dir, NodeSpec(MAC, uuid=UUID), extra='[boot]\nunknown_nodes = "discover"')
    assert discovered(b.config.boot, b.directory, MAC, None) is None  # registered
    assert discovered(b.config.boot, b.directory, NEW_NIC, UUID) is None  # a known machine on a new NIC
    spec = discovered(b.config.boot, b.directory, "52:54:00:00:00:09", None)
    assert spec is not None and spec.discovered and spec.image == "demo"
    assert discovered(booter(data_dir).config.boot, FakeDirectory(), "52:54:00:00:00:09", None) is None  # not in discover mode


def test_modules_layer_goes_on_the_command_line_beside_each_root_url(data_dir):
    """An image with a modules layer: one ramboot.modules= per root URL, in the same order, and its sha256."""
    import hashlib

    from ramboot.images.manifest import MODULES, FileEntry

    m = write_fake_image(data_dir, "demo")
    m.files[MODULES] = FileEntry(size=4, sha256=hashlib.sha256(b"mods").hexdigest())
    (data_dir / "images" / "demo" / "image.toml").write_text(m.to_toml())
    d = booter(data_dir, NodeSpec(MAC, image="demo")).decide(Client(MAC, ipxe=True))
    urls = [a.split("=", 1)[1] for a in d.cmdline.split() if a.startswith("ramboot.modules=")]
    assert urls == [u.rsplit("/", 1)[0] + "/modules.squashfs" for u in d.root_urls]
    assert f"ramboot.modules.sha256={m.files[MODULES].sha256}" in d.cmdline
    plain = booter(data_dir, NodeSpec(MAC, image="other")).decide(Client(MAC, ipxe=True))
    assert "ramboot.modules" not in plain.cmdline  # no manifest, no layer


def _run_ipxe(script: str, fails: int) -> tuple[int, str]:
    """Walk the script as iPXE would, the first `fails` kernel/initrd fetches failing; returns
    (fetches tried, how it ended: "boot" or the FAILED line). Only the commands the script uses:
    labels, `goto`, `||`/`&&`, `iseq`, `set`, `echo`, `exit`, and setting expansion."""
    lines = script.splitlines()[1:]
    labels = {ln[1:]: i for i, ln in enumerate(lines) if ln.startswith(":")}
    settings: dict[str, str] = {}
    fetches, i = 0, 0

    def run(cmd: str) -> bool | str:
        nonlocal fetches
        words = re.sub(r"\$\{(\w+)\}", lambda m: settings.get(m[1], ""), cmd).split()
        if words[0] in ("kernel", "initrd"):
            fetches += 1
            return fetches > fails
        if words[0] == "iseq":
            return words[1] == words[2]
        if words[0] == "set":
            settings[words[1]] = words[2] if len(words) > 2 else ""
            return True
        if words[0] == "goto":
            return "goto:" + words[1]
        if words[0] == "boot":
            return "boot"
        if words[0] == "exit":
            return "exit"
        return True  # echo

    failed_line = ""
    for _ in range(1000):
        ln = lines[i]
        i += 1
        if ln.startswith(":"):
            continue
        if ln.startswith("echo ramboot: FAILED"):
            failed_line = ln[5:]
        ok: bool | str = True
        for op, part in re.findall(r"(^|\|\||&&)\s*([^|&]*)", ln):
            part = part.strip()
            if (op == "||" and ok is True) or (op == "&&" and ok is not True) or not part:
                continue
            ok = run(part)
            if isinstance(ok, str):
                break
        if ok == "boot":
            return fetches, "boot"
        if ok == "exit":
            return fetches, failed_line
        if isinstance(ok, str) and ok.startswith("goto:"):
            i = labels[ok[5:]] + 1
    raise AssertionError("the script loops")


@pytest.mark.parametrize("fails", [0, 1, 3, render.IPXE_FETCH_TRIES - 1, render.IPXE_FETCH_TRIES, 50])
def test_ipxe_script_retries_a_failed_download_then_says_so(data_dir, fails):
    write_fake_image(data_dir, "demo")
    script = render.ipxe_script(booter(data_dir, NodeSpec(MAC, image="demo")).decide(Client(MAC, ipxe=True)))
    fetches, end = _run_ipxe(script, fails)
    if fails < render.IPXE_FETCH_TRIES:  # a failed try is the kernel, the initrd or ca.cpio: then all again
        assert end == "boot" and fetches == fails + 3
    else:
        assert fetches == render.IPXE_FETCH_TRIES
        assert end == f"ramboot: FAILED the kernel and initrd could not be fetched in {render.IPXE_FETCH_TRIES} tries"
