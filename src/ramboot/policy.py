"""The one policy seam: "who is this machine" in, "what does it boot" out.

DHCP, TFTP and HTTP all ask the `Booter`; none of them holds policy. Like
Pixiecore's Booter, it is the only place that knows about nodes, images,
loaders and kernel arguments.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from .config import Config
from .images.manifest import INITRD, KERNEL, MANIFEST, ROOTFS, Manifest, ManifestError, images_dir, load_manifest
from .inventory.store import NodeSpec, Store
from .macaddr import mac_hyphen, normalize_mac

# RFC 4578 option 93 values (IANA "Processor Architecture Types").
ARCH_BIOS = 0
ARCH_UEFI_IA32 = 6
ARCH_UEFI_X64 = 7
ARCH_UEFI_BC = 9  # EFI byte code; firmwares also send it for x64
ARCH_UEFI_X64_HTTP = 16
UEFI_ARCHES = {ARCH_UEFI_IA32, ARCH_UEFI_X64, ARCH_UEFI_BC, ARCH_UEFI_X64_HTTP}

# Boot programs, in the namespace's top level (copied from Debian's packages).
LOADER_BIOS = "undionly.kpxe"
LOADER_UEFI = "snponly.efi"
LOADER_PXELINUX = "pxelinux.0"

DRACUT_LIVE_ARGS = "rd.neednet=1 ip=dhcp rd.live.overlay.overlayfs=1"


class Firmware(str, Enum):
    BIOS = "bios"
    UEFI = "uefi"
    UEFI_HTTP = "uefi-http"
    IPXE = "ipxe"


@dataclass(frozen=True)
class Client:
    """What the network tells us about a machine (from its DHCP request)."""

    mac: str
    arch: int | None = None
    vendor_class: str = ""
    user_class: str = ""
    uuid: str | None = None
    ipxe: bool = False  # user class "iPXE" or option 175 present

    @property
    def firmware(self) -> Firmware:
        if self.ipxe or self.user_class == "iPXE":
            return Firmware.IPXE
        if self.vendor_class.startswith("HTTPClient") or self.arch == ARCH_UEFI_X64_HTTP:
            return Firmware.UEFI_HTTP
        if self.arch in UEFI_ARCHES:
            return Firmware.UEFI
        return Firmware.BIOS

    @property
    def is_pxe(self) -> bool:
        """A PXE or HTTP-boot firmware (or iPXE): the clients proxy mode answers."""
        return (
            self.vendor_class.startswith(("PXEClient", "HTTPClient"))
            or self.ipxe
            or self.user_class == "iPXE"
        )


@dataclass(frozen=True)
class BootPlan:
    """What one machine boots. `known` is False for an unknown node booting the default."""

    mac: str
    image: str
    loader: str
    kernel_args: str
    hostname: str | None
    ip: str | None
    known: bool


@dataclass(frozen=True)
class BootFile:
    """The DHCP answer's boot program: a TFTP file name or an http URL."""

    filename: str
    http: bool  # the client must be told vendor class "HTTPClient" back


class Booter:
    def __init__(self, config: Config, store: Store, server_ip: str):
        self.config = config
        self.store = store
        self.server_ip = str(ipaddress.IPv4Address(server_ip))
        self._manifests: dict[str, tuple[tuple[int, int], Manifest]] = {}  # image -> ((mtime_ns, size), manifest)

    @property
    def http_base(self) -> str:
        port = self.config.http.port
        return f"http://{self.server_ip}" + ("" if port == 80 else f":{port}")

    def node(self, mac: str, uuid: str | None = None) -> NodeSpec | None:
        spec = self.store.get_node(mac)
        if spec is None and uuid:
            spec = self.store.node_by_uuid(uuid)
        return spec

    def plan(self, mac: str, uuid: str | None = None) -> BootPlan | None:
        """None means: do not boot this machine (unknown and `unknown_nodes = "ignore"`)."""
        mac = normalize_mac(mac)
        spec = self.node(mac, uuid)
        boot = self.config.boot
        if spec is None:
            if boot.unknown_nodes == "ignore":
                return None
            return BootPlan(mac, boot.default_image, boot.loader, "", None, None, known=False)
        return BootPlan(
            mac=mac,
            image=spec.image or boot.default_image,
            loader=spec.loader or boot.loader,
            kernel_args=spec.kernel_args,
            hostname=spec.hostname,
            ip=spec.ip,
            known=True,
        )

    def boot_file(self, client: Client) -> BootFile | None:
        """The boot program for a DHCP answer; the OFFER and the ACK both use this."""
        plan = self.plan(client.mac, client.uuid)
        if plan is None:
            return None
        fw = client.firmware
        if plan.loader == "pxelinux" and fw in (Firmware.BIOS, Firmware.IPXE) and client.arch in (None, ARCH_BIOS):
            # The classic path even from a BIOS iPXE ROM (QEMU's): pxelinux.0 reuses the
            # cached DHCP answer, so this cannot loop.
            return BootFile(LOADER_PXELINUX, http=False)
        if fw is Firmware.IPXE:
            # Already iPXE: straight to its script, so it never chainloads itself.
            return BootFile(self.script_url(plan.mac), http=False)
        if fw is Firmware.UEFI_HTTP:
            return BootFile(f"{self.http_base}/{LOADER_UEFI}", http=True)
        return BootFile(LOADER_UEFI if fw is Firmware.UEFI else LOADER_BIOS, http=False)

    def script_url(self, mac: str) -> str:
        return f"{self.http_base}/boot/{mac_hyphen(mac)}.ipxe"

    def entry_script(self) -> str:
        """`/boot.ipxe`: for clients pointed at us by another DHCP server."""
        return f"#!ipxe\nchain {self.http_base}/boot/${{netX/mac:hexhyp}}.ipxe || shell\n"

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

    def kernel_cmdline(self, plan: BootPlan, live_form: bool = False, bootif: bool = True) -> str:
        """Kernel arguments: the root URL, its sha256 and where to report (and BOOTIF, unless the
        loader appends it itself)."""
        try:
            manifest = self.manifest(plan.image)
            sha = manifest.files[ROOTFS].sha256
            dracut = manifest.initramfs == "dracut"
        except (ManifestError, KeyError):
            sha, dracut = None, False
        root = f"{self.http_base}/images/{plan.image}/{ROOTFS}"
        args = [self.config.boot.kernel_args]
        args.append(f"root=live:{root}" if live_form or dracut else f"ramboot.url={root}")
        if dracut:
            # dracut's livenet needs the network up in the initramfs, and an overlayfs
            # (not device-mapper) writable layer over the squashfs.
            args.append(DRACUT_LIVE_ARGS)
        if sha:
            args.append(f"ramboot.sha256={sha}")
        args.append(f"ramboot.server={self.http_base}")
        if bootif:
            args.append(f"BOOTIF=01-{mac_hyphen(plan.mac)}")
        if plan.hostname:
            args.append(f"ramboot.hostname={plan.hostname}")
        if plan.kernel_args:
            args.append(plan.kernel_args)
        return " ".join(a for a in args if a)

    def ipxe_script(self, mac: str) -> str | None:
        plan = self.plan(mac)
        if plan is None:
            return None
        base = f"{self.http_base}/images/{plan.image}"
        return (
            "#!ipxe\n"
            f"echo ramboot: booting {plan.image} on {plan.mac}\n"
            f"kernel {base}/{KERNEL} initrd={INITRD} {self.kernel_cmdline(plan)}\n"
            f"initrd {base}/{INITRD}\n"
            "boot\n"
        )

    def pxelinux_config(self, mac: str | None) -> str | None:
        """`pxelinux.cfg/01-<mac>` (or `default` when mac is None and unknowns boot)."""
        if mac is None:
            if self.config.boot.unknown_nodes == "ignore":
                return None
            plan = BootPlan("00:00:00:00:00:00", self.config.boot.default_image, "pxelinux", "", None, None, False)
        else:
            plan = self.plan(mac)
            if plan is None:
                return None
        img = f"images/{plan.image}"
        cmdline = self.kernel_cmdline(plan, live_form=True, bootif=mac is not None)  # default: IPAPPEND 2
        return (
            "DEFAULT ramboot\n"
            "PROMPT 0\n"
            "TIMEOUT 0\n"
            "LABEL ramboot\n"
            f"  KERNEL {img}/{KERNEL}\n"
            f"  INITRD {img}/{INITRD}\n"
            f"  APPEND {cmdline}\n"
            + ("  IPAPPEND 2\n" if mac is None else "")
        )
