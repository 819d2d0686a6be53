"""The one policy seam: "who is this machine" in, a `Decision` out.

DHCP, TFTP and HTTP each ask `Booter.decide()` once per request; none of them
holds policy. Like Pixiecore's `BootSpec`, a `Decision` is a plain frozen value
that says everything about one boot: which node this is, what it boots, how,
and with which kernel command line. Boot scripts and configs are pure renderers
of it (`render.py`). The node is chosen by specificity, as matchbox does: a
node registered with this MAC, else one registered with this UUID, else the
default for unknown machines (`[boot] unknown_nodes`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

from . import names
from .config import Config
from .images.manifest import INITRD, KERNEL, MANIFEST, ROOTFS, Manifest, ManifestError, images_dir, load_manifest
from .inventory.records import NodeSpec
from .macaddr import mac_hyphen, normalize_mac
from .proto.pxe import ARCH_BIOS, BootFile, Client, Firmware

# Boot programs, in the namespace's top level (copied from Debian's packages).
LOADER_BIOS = "undionly.kpxe"
LOADER_UEFI = "snponly.efi"
LOADER_PXELINUX = "pxelinux.0"
# Secure Boot: Debian's signed shim, and beside it Debian's signed GRUB netboot image
# under the name shim loads from the directory of the BOOTP file field.
LOADER_SHIM = "shimx64.efi"
LOADER_GRUB = "grubx64.efi"

DRACUT_LIVE_ARGS = "rd.neednet=1 ip=dhcp rd.live.overlay.overlayfs=1"


class Directory(Protocol):
    """The nodes an operator registered: the store, a snapshot of it, or a test's dict."""

    def get_node(self, mac: str) -> NodeSpec | None: ...

    def node_by_uuid(self, uuid: str) -> NodeSpec | None: ...


@dataclass(frozen=True)
class Decision:
    """Everything about one machine's boot, decided once, rendered by DHCP, TFTP and HTTP."""

    mac: str  # the NIC that asked ("" for pxelinux's `default` and UUID names, which carry none)
    uuid: str | None  # the machine's SMBIOS UUID, when it said
    node: str | None  # the registered node's MAC; None for a machine nobody registered
    image: str
    loader: str  # ipxe | pxelinux | grub
    boot_file: BootFile  # what the DHCP answer names
    fixed_ip: str | None
    hostname: str | None
    http_base: str
    kernel: str  # served names, `images/<image>/vmlinuz`
    initrd: str
    cmdline: str  # the whole kernel command line
    root_urls: tuple[str, ...]  # in the order the initramfs tries them

    @property
    def script(self) -> str:
        """The served name of this machine's iPXE script; it carries the MAC and the UUID."""
        return names.script(self.mac, self.uuid)


class Booter:
    """Decides; holds the config, the node directory and a manifest cache, nothing per request."""

    def __init__(self, config: Config, directory: Directory, server_ip: str):
        self.config = config
        self.directory = directory
        self.server_ip = str(ipaddress.IPv4Address(server_ip))
        self._manifests: dict[str, tuple[tuple[int, int], Manifest]] = {}  # image -> ((mtime_ns, size), manifest)

    def using(self, directory: Directory) -> Booter:
        """The same policy over another directory (the DHCP server's snapshot); shares the manifest cache."""
        other = Booter(self.config, directory, self.server_ip)
        other._manifests = self._manifests
        return other

    @property
    def http_base(self) -> str:
        port = self.config.http.port
        return f"http://{self.server_ip}" + ("" if port == 80 else f":{port}")

    # -- the decision ---------------------------------------------------------------
    def decide(self, client: Client, loader: str | None = None) -> Decision | None:
        """What this machine boots; None: do not boot it (unknown, and `unknown_nodes = "ignore"`).

        `loader` is set when the request itself says which loader asks (a pxelinux config).
        """
        mac = normalize_mac(client.mac) if client.mac else ""
        spec = self.directory.get_node(mac) if mac else None
        if spec is None and client.uuid:
            spec = self.directory.node_by_uuid(client.uuid)
        boot = self.config.boot
        if spec is None and boot.unknown_nodes == "ignore":
            return None
        image = (spec.image if spec else None) or boot.default_image
        loader = loader or (spec.loader if spec else None) or boot.loader
        hostname = spec.hostname if spec else None
        root_urls = (f"{self.http_base}/{names.image_file(image, ROOTFS)}",)
        return Decision(
            mac=mac,
            uuid=client.uuid,
            node=spec.mac if spec else None,
            image=image,
            loader=loader,
            boot_file=self._boot_file(client, loader, mac, client.uuid),
            fixed_ip=spec.ip if spec else None,
            hostname=hostname,
            http_base=self.http_base,
            kernel=names.image_file(image, KERNEL),
            initrd=names.image_file(image, INITRD),
            cmdline=self._cmdline(image, loader, mac, hostname, spec.kernel_args if spec else "", root_urls),
            root_urls=root_urls,
        )

    def _boot_file(self, client: Client, loader: str, mac: str, uuid: str | None) -> BootFile:
        fw = client.firmware
        if loader == "grub" and fw is Firmware.UEFI and self.config.dhcp.mode != "proxy":
            # UEFI PXE only: shim, then GRUB beside it, then grub/grub.cfg, all over TFTP.
            # Over UEFI HTTP boot that GRUB has no way on (no http module, none loadable
            # under lockdown), and BIOS has no shim: both fall through to iPXE below. So
            # does proxy mode, where GRUB would stop at `grub>` (config.GRUB_PROXY_REFUSED;
            # `node add` and the API refuse it, `doctor` names nodes set so before).
            return BootFile(LOADER_SHIM, http=False)
        if loader == "pxelinux" and fw in (Firmware.BIOS, Firmware.IPXE) and client.arch in (None, ARCH_BIOS):
            # The classic path even from a BIOS iPXE ROM (QEMU's): pxelinux.0 reuses the
            # cached DHCP answer, so this cannot loop.
            return BootFile(LOADER_PXELINUX, http=False)
        if fw is Firmware.IPXE:
            # Already iPXE: straight to its script, so it never chainloads itself.
            return BootFile(f"{self.http_base}/{names.script(mac, uuid)}", http=False)
        if fw is Firmware.UEFI_HTTP:
            return BootFile(f"{self.http_base}/{LOADER_UEFI}", http=True)
        return BootFile(LOADER_UEFI if fw is Firmware.UEFI else LOADER_BIOS, http=False)

    def _cmdline(self, image: str, loader: str, mac: str, hostname: str | None, node_args: str,
                 root_urls: tuple[str, ...]) -> str:
        """The root URLs, the root's sha256 and where to report; BOOTIF when the MAC is known
        (pxelinux appends it itself otherwise: IPAPPEND 2)."""
        try:
            manifest = self.manifest(image)
            sha: str | None = manifest.files[ROOTFS].sha256
            initrd = manifest.files[INITRD].sha256 if INITRD in manifest.files else None
            dracut = manifest.initramfs == "dracut"
        except (ManifestError, KeyError):
            sha, initrd, dracut = None, None, False
        args = [self.config.boot.kernel_args]
        if loader == "pxelinux" or dracut:
            # The classic form; dracut's livenet takes one root, ramboot's initramfs any.
            args.append(f"root=live:{root_urls[0]}")
            if not dracut:
                args += [f"ramboot.url={u}" for u in root_urls[1:]]
        else:
            args += [f"ramboot.url={u}" for u in root_urls]
        if dracut:
            # dracut's livenet needs the network up in the initramfs, and an overlayfs
            # (not device-mapper) writable layer over the squashfs.
            args.append(DRACUT_LIVE_ARGS)
        if sha:
            args.append(f"ramboot.sha256={sha}")
        if initrd:
            # Nothing in the chain verifies the initrd (docs/uefi-bios.md): the command
            # line names the one this boot meant, and the initramfs reports it.
            args.append(f"ramboot.initrd_sha256={initrd}")
        args.append(f"ramboot.server={self.http_base}")
        if mac:
            args.append(f"BOOTIF=01-{mac_hyphen(mac)}")
        if hostname:
            args.append(f"ramboot.hostname={hostname}")
        if node_args:
            args.append(node_args)
        return " ".join(a for a in args if a)

    # -- images ---------------------------------------------------------------------
    def manifest(self, image: str) -> Manifest:
        """An image's manifest, read again only when its image.toml changes; raises ManifestError.

        Boot scripts and HTTP ETags ask for it per request: one stat, not a parse.
        """
        try:
            st = (images_dir(self.config.data_dir) / image / MANIFEST).stat()
        except OSError:
            self._manifests.pop(image, None)
            return load_manifest(self.config.data_dir, image)  # raises the right ManifestError
        key = (st.st_mtime_ns, st.st_size)
        cached = self._manifests.get(image)
        if cached is None or cached[0] != key:
            cached = (key, load_manifest(self.config.data_dir, image))
            self._manifests[image] = cached
        return cached[1]

    def file_sha256(self, image: str, file: str, size: int) -> str | None:
        """The manifest's sha256 for an image file, if the manifest lists it at this size (strong ETags)."""
        try:
            entry = self.manifest(image).files.get(file)
        except ManifestError:
            return None
        return entry.sha256 if entry is not None and entry.size == size else None

    # -- discovery --------------------------------------------------------------------
    def discovered(self, mac: str, uuid: str | None) -> NodeSpec | None:
        """The node to register for a machine that reported its hardware, or None.

        Only in `unknown_nodes = "discover"` and only for a machine nobody registered.
        """
        if self.config.boot.unknown_nodes != "discover" or self.directory.get_node(mac) is not None:
            return None
        if uuid and self.directory.node_by_uuid(uuid) is not None:
            return None  # a known machine on a new NIC: it is registered already
        return NodeSpec(mac=normalize_mac(mac), image=self.config.boot.default_image, uuid=uuid, discovered=True)
