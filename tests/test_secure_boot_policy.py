"""Loader "grub" (Secure Boot): the boot program per firmware, the GRUB names, grub.cfg.

Table-driven over an in-memory directory (tests/directory_fakes.py): no store, no server.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import write_fake_image
from directory_fakes import FakeDirectory
from ramboot import names, render
from ramboot.config import ConfigError, parse_config
from ramboot.images.manifest import load_manifest
from ramboot.images.secureboot import SHIM, kernel_signature, shim_vendor_cert
from ramboot.inventory.records import NodeSpec
from ramboot.namespace import GeneratedFile, Namespace
from ramboot.policy import Booter
from ramboot.proto.pxe import Client

MAC = "52:54:00:12:34:56"
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
BASE = "http://172.22.33.2"

BIOS = Client(MAC, arch=0, vendor_class="PXEClient:Arch:00000:UNDI:002001")
UEFI = Client(MAC, arch=7, vendor_class="PXEClient:Arch:00007:UNDI:003016")
UEFI_BC = Client(MAC, arch=9, vendor_class="PXEClient:Arch:00009:UNDI:003016")
UEFI_HTTP = Client(MAC, arch=16, vendor_class="HTTPClient:Arch:00016:UNDI:003001")
IPXE = Client(MAC, arch=7, vendor_class="PXEClient:Arch:00007", user_class="iPXE", ipxe=True)


def booter(data_dir, *nodes: NodeSpec, extra: str = "") -> Booter:
    return Booter(parse_config(f'data_dir = "{data_dir}"\n{extra}'), FakeDirectory(*nodes), "172.22.33.2")


@pytest.mark.parametrize(
    "client, filename, http",
    [
        (UEFI, "shimx64.efi", False),
        (UEFI_BC, "shimx64.efi", False),
        # GRUB cannot go on over http (no http module under lockdown): iPXE over HTTP.
        (UEFI_HTTP, f"{BASE}/snponly.efi", True),
        # BIOS has no shim: iPXE.
        (BIOS, "undionly.kpxe", False),
        (Client(MAC), "undionly.kpxe", False),
        # Already iPXE (an operator's own chain): its script, never a loop.
        (IPXE, f"{BASE}/boot/52-54-00-12-34-56.ipxe", False),
    ],
    ids=["uefi", "uefi-bc", "uefi-http", "bios", "no-arch", "ipxe"],
)
@pytest.mark.parametrize("how", ["node", "config"])
def test_grub_loader_per_firmware(data_dir, client, filename, http, how):
    if how == "node":
        b = booter(data_dir, NodeSpec(MAC, image="demo", loader="grub"))
    else:
        b = booter(data_dir, extra='[boot]\nloader = "grub"')
    d = b.decide(client)
    assert d is not None and (d.boot_file.filename, d.boot_file.http) == (filename, http)
    assert d.loader == "grub"


def test_ipxe_node_beside_grub_default(data_dir):
    b = booter(data_dir, NodeSpec(MAC, image="demo", loader="ipxe"), extra='[boot]\nloader = "grub"')
    assert b.decide(UEFI).boot_file.filename == "snponly.efi"
    assert b.decide(Client("52:54:00:00:00:01", arch=7)).boot_file.filename == "shimx64.efi"


def test_config_refuses_unknown_loader_in_one_line():
    with pytest.raises(ConfigError) as e:
        parse_config('[boot]\nloader = "lilo"', "x.toml")
    assert "boot.loader" in str(e.value) and "grub" in str(e.value) and "\n" not in str(e.value)


# -- names -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, parsed",
    [
        ("grub/grub.cfg", names.GrubConfig()),
        (f"grub/{MAC}.cfg", names.GrubConfig(MAC)),
        ("grub/52-54-00-12-34-56.cfg", names.GrubConfig(MAC)),
        (f"grub/{MAC}/{UUID}.cfg", names.GrubConfig(MAC, UUID)),
        (f"grub/{MAC}/00000000-0000-0000-0000-000000000000.cfg", names.GrubConfig(MAC)),  # a null UUID is none
        ("grub/x86_64-efi/grub.cfg", None),  # GRUB tries it first: a miss
        ("grub/not-a-mac.cfg", None),
        (f"grub/{MAC}", None),
        (f"grub/{MAC}/not-a-uuid.cfg", None),
        ("grub/a/b/c.cfg", None),
        ("shimx64.efi", names.Loader("shimx64.efi")),
        ("grubx64.efi", names.Loader("grubx64.efi")),
    ],
)
def test_grub_names_parse(name, parsed):
    assert names.parse(name) == parsed


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("/grub/grub.cfg", names.GrubConfig()),
        (f"/grub/{MAC}.cfg", names.GrubConfig(MAC)),
        ("/images/demo/vmlinuz", names.ImageFile("demo", "vmlinuz")),
        ("grub/grub.cfg", names.GrubConfig()),  # TFTP without the slash is the same name
        ("/grub/x86_64-efi/grub.cfg", None),
    ],
)
def test_grub_rooted_names(name, parsed):
    assert names.parse_rooted(name) == parsed


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "/shimx64.efi", "//grubx64.efi", "/boot/52-54-00-12-34-56.ipxe", "/grub/../etc/passwd",
     "/images/../../etc/passwd", "/grub//grub.cfg", "/"],
)
def test_rooted_names_stay_refused(name):
    with pytest.raises(names.PathRefused):
        names.parse_rooted(name)


def test_grub_names_build_and_parse_back():
    assert names.grub_entry() == "grub/grub.cfg"
    for mac in (MAC, "52-54-00-12-34-56", "525400123456"):
        assert names.grub_config(mac) == f"grub/{MAC}.cfg"
        assert names.parse(names.grub_config(mac, UUID)) == names.GrubConfig(MAC, UUID)


# -- grub.cfg ---------------------------------------------------------------------

def test_grub_entry_dispatches_by_uuid_then_mac():
    cfg = render.grub_entry()
    assert "smbios --type 1 --get-uuid 8 --set ramboot_uuid" in cfg
    assert 'source "$prefix/$net_default_mac/$ramboot_uuid.cfg"' in cfg
    assert 'source "$prefix/$net_default_mac.cfg"' in cfg
    assert "ramboot: FAILED" in cfg.splitlines()[-1]


def test_grub_cfg_boots_the_kernel_and_initrd_over_tftp(data_dir):
    m = write_fake_image(data_dir, "demo")
    b = booter(data_dir, NodeSpec(MAC, image="demo", loader="grub", hostname="n1",
                                  kernel_args="quiet it's=$x"))
    cfg = render.grub_cfg(b.decide(replace(UEFI, asks="grub-cfg")))
    lines = cfg.splitlines()
    assert lines[1] == f"echo 'ramboot: booting demo on {MAC}'"
    linux = next(ln for ln in lines if ln.startswith("linux "))
    assert linux.startswith("linux /images/demo/vmlinuz 'console=")
    assert f"'ramboot.url={BASE}/images/demo/rootfs.squashfs'" in linux
    assert f"'ramboot.sha256={m.files['rootfs.squashfs'].sha256}'" in linux
    assert f"'ramboot.initrd_sha256={m.files['initrd.img'].sha256}'" in linux
    assert "'BOOTIF=01-52-54-00-12-34-56'" in linux and "'ramboot.hostname=n1'" in linux
    # quoted for GRUB's parser: no expansion, a quote survives
    assert "'$x'" not in linux and "'it'\\''s=$x'" in linux
    assert lines[-2:] == ["initrd /ca.cpio /images/demo/initrd.img", "boot"]  # the CA the node pins, first


def test_initrd_sha256_on_every_loaders_command_line(data_dir):
    m = write_fake_image(data_dir, "demo")
    want = f"ramboot.initrd_sha256={m.files['initrd.img'].sha256}"
    assert want in render.ipxe_script(booter(data_dir).decide(IPXE))
    assert want in render.pxelinux_config(booter(data_dir).decide(replace(BIOS, asks="pxelinux-cfg")))


def test_namespace_generates_grub_configs(data_dir):
    write_fake_image(data_dir, "demo")
    ns = Namespace(data_dir, booter(data_dir, NodeSpec(MAC, image="demo", loader="grub")))
    entry = ns.resolve("/grub/grub.cfg", rooted=True)
    assert isinstance(entry, GeneratedFile) and entry.kind == "entry-script" and entry.mac is None
    own = ns.resolve(f"/grub/{MAC}/{UUID}.cfg", rooted=True)
    assert isinstance(own, GeneratedFile) and b"linux /images/demo/vmlinuz" in own.data
    assert own.mac is None and b"ramboot.token=" not in own.data  # no access rule here: no credential, no boot opened
    assert ns.resolve("/grub/x86_64-efi/grub.cfg", rooted=True) is None
    assert ns.resolve("/images/demo/vmlinuz", rooted=True).kind == "kernel"
    ignore = Namespace(data_dir, booter(data_dir, extra='[boot]\nunknown_nodes = "ignore"'))
    assert ignore.resolve(f"grub/{MAC}.cfg") is None  # nobody registered it: no config


# -- the kernel's signature ------------------------------------------------------------

needs_sb_tools = pytest.mark.skipif(shutil.which("sbverify") is None or not SHIM.is_file(),
                                    reason="needs sbsigntool and shim-signed (scripts/setup.sh)")


@needs_sb_tools
def test_shim_carries_debians_ca():
    cert = shim_vendor_cert()
    assert cert is not None and b"Debian Secure Boot CA" in cert


@needs_sb_tools
def test_kernel_signature_against_shims_certificate(tmp_path: Path):
    grub = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")  # signed by Debian, as its kernels
    s = kernel_signature(grub)
    assert s.shim_accepts is True and "Debian Secure Boot Signer" in s.signer, s
    unsigned = kernel_signature(Path("/usr/lib/ipxe/snponly.efi"))
    assert unsigned.shim_accepts is False and unsigned.signer == "", unsigned
    # Signed by someone shim does not know: shim's own image carries Microsoft's signature.
    other = kernel_signature(SHIM)
    assert other.shim_accepts is False and "Microsoft" in other.signer, other


def test_manifest_keeps_the_kernel_signature(data_dir):
    m = write_fake_image(data_dir, "demo")
    assert load_manifest(data_dir, "demo").kernel_signed is None  # not recorded: unknown
    m.kernel_signed, m.kernel_signer = False, ""
    (data_dir / "images" / "demo" / "image.toml").write_text(m.to_toml())
    assert load_manifest(data_dir, "demo").kernel_signed is False
    m.kernel_signed, m.kernel_signer = True, "/CN=Debian Secure Boot Signer 2022 - linux"
    (data_dir / "images" / "demo" / "image.toml").write_text(m.to_toml())
    again = load_manifest(data_dir, "demo")
    assert (again.kernel_signed, again.kernel_signer) == (True, m.kernel_signer)


# -- one clear line: an unsigned kernel, and GRUB with proxyDHCP ---------------------------

def _unsigned_image(data_dir: Path, name: str = "plain") -> None:
    m = write_fake_image(data_dir, name)
    m.kernel_signed = False
    (data_dir / "images" / name / "image.toml").write_text(m.to_toml())


def _config(data_dir: Path, extra: str = "") -> str:
    p = data_dir.parent / "ramboot.toml"
    p.write_text(f'data_dir = "{data_dir}"\n{extra}')
    return str(p)


def _node(*args: str):
    from click.testing import CliRunner

    from ramboot.inventory.cli import node

    return CliRunner().invoke(node, list(args), catch_exceptions=False)


def test_node_add_grub_with_unsigned_kernel_says_so_once(data_dir):
    _unsigned_image(data_dir)
    cfg = _config(data_dir)
    r = _node("add", MAC, "--image", "plain", "--loader", "grub", "--config", cfg)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "signature" in ln]
    assert len(lines) == 1 and "plain" in lines[0] and "Secure Boot" in lines[0], r.output
    r = _node("add", MAC, "--image", "plain", "--loader", "ipxe", "--config", cfg)
    assert "signature" not in r.output  # iPXE does not care


def test_node_add_refuses_grub_in_proxy_mode(data_dir):
    write_fake_image(data_dir, "demo")
    cfg = _config(data_dir, '[dhcp]\nmode = "proxy"\n')
    r = _node("add", MAC, "--image", "demo", "--loader", "grub", "--config", cfg)
    assert r.exit_code != 0 and "proxy" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_config_refuses_grub_with_proxy_in_one_line():
    with pytest.raises(ConfigError) as e:
        parse_config('[dhcp]\nmode = "proxy"\n[boot]\nloader = "grub"', "x.toml")
    assert "proxy" in str(e.value) and "grub>" in str(e.value) and "\n" not in str(e.value)


def test_grub_node_in_proxy_mode_falls_back_to_ipxe(data_dir):
    """A node set to grub before the config went proxy: iPXE, which can boot there (without Secure Boot)."""
    b = booter(data_dir, NodeSpec(MAC, image="demo", loader="grub"), extra='[dhcp]\nmode = "proxy"\n')
    assert b.decide(UEFI).boot_file.filename == "snponly.efi"


def test_doctor_names_unsigned_kernels_and_grub_in_proxy_mode(data_dir):
    from ramboot.doctor import check_secure_boot
    from ramboot.inventory.store import Store

    _unsigned_image(data_dir)
    write_fake_image(data_dir, "demo")
    cfg = parse_config(f'data_dir = "{data_dir}"\n')
    assert check_secure_boot(cfg) == []  # nobody uses grub: nothing to say
    store = Store.for_config(cfg)
    store.nodes.put(NodeSpec(MAC, image="plain", loader="grub"))
    store.close()
    bad = [f for f in check_secure_boot(cfg) if not f.ok]
    assert len(bad) == 1 and "image plain" in bad[0].what and MAC in bad[0].what, bad
    assert "\n" not in bad[0].line()
    proxy = parse_config(f'data_dir = "{data_dir}"\n[dhcp]\nmode = "proxy"\n')
    assert any("proxy mode" in f.what for f in check_secure_boot(proxy) if not f.ok)


# -- the lab's firmwares -------------------------------------------------------------------

def test_lab_secure_boot_and_http_boot_argv(tmp_path: Path):
    from ramboot.lab.netns import LabError
    from ramboot.lab.vm import OVMF_CODE_SB, OVMF_VARS_SB, qemu_argv

    if not OVMF_CODE_SB.is_file():
        pytest.skip("needs Debian's ovmf")
    sb = qemu_argv("uefi", MAC, "rbt1", "tcg", tmp_path, secure_boot=True)
    assert "q35,smm=on" in sb and "driver=cfi.pflash01,property=secure,value=on" in sb
    assert any(a.endswith("OVMF_CODE_4M.ms.fd") for a in " ".join(sb).replace(",", " ").split())
    vars_copy = tmp_path / "OVMF_VARS.fd"
    assert vars_copy.read_bytes() == OVMF_VARS_SB.read_bytes()  # a copy: the original stays untouched
    http = qemu_argv("uefi-http", MAC, "rbt1", "tcg", tmp_path)
    assert "name=opt/org.tianocore/IPv4PXESupport,string=n" in http and "q35" in http
    with pytest.raises(LabError, match="--secure-boot needs a UEFI firmware"):
        qemu_argv("bios", MAC, "rbt1", "tcg", tmp_path, secure_boot=True)
