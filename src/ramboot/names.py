"""The one grammar of served names: built here, parsed here, nowhere else.

TFTP and HTTP share one namespace. A name is one of:

| name                          | what                                              |
|-------------------------------|---------------------------------------------------|
| `boot.ipxe`                   | the entry script, for clients another DHCP sent   |
| `ca.cpio`                     | the CA a node pins, as a second initrd (tls.py)   |
| `boot/<mac>.ipxe`             | a machine's iPXE script                           |
| `boot/<mac>/<uuid>.ipxe`      | the same, for a machine that told its UUID        |
| `pxelinux.cfg/01-<mac>`       | a machine's pxelinux config                       |
| `pxelinux.cfg/<uuid>`         | the same, asked by UUID (pxelinux asks this first)|
| `pxelinux.cfg/default`        | the config of a machine nobody knows              |
| `grub/grub.cfg`               | the config every GRUB reads first; it dispatches  |
| `grub/<mac>.cfg`              | a machine's GRUB config (`$net_default_mac` form) |
| `grub/<mac>/<uuid>.cfg`       | the same, for a machine whose SMBIOS has a UUID   |
| `images/<image>/<file>`       | a file of an image                                |
| `overlay/<mac>[/<uuid>].tar`  | a node's identity and overlays, rendered for it   |
| `overlay/<mac>[/<uuid>].tar.sha256` | that archive's sha256, checked before use   |
| `<file>`                      | a boot program (`undionly.kpxe`, `snponly.efi`, `shimx64.efi`, `grubx64.efi`…) |

The name a DHCP answer hands out carries everything the next request needs
(MAC and UUID), so the script request finds the node the DHCP answer found.
Validation is part of parsing: `..`, absolute paths, backslashes, NUL,
control and percent characters never name anything. A machine's script or
config name is also what the policy is told of the machine (`client()`): its
MAC, its UUID and what it asks for, which says the firmware or loader asking.

One exception for one client: Debian's signed GRUB asks TFTP for `/grub/grub.cfg`
(its prefix is `(tftp,<server>)/grub`, and it sends the path with its leading
slash) and then for whatever `grub.cfg` names, again rooted. `parse_rooted()`
takes one leading `/` off such a request only when what remains is a GRUB
config, an image file or `ca.cpio`; it is still split and validated like any other name,
so `/etc/passwd` and `//x` stay refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .macaddr import BadMac, mac_hyphen, normalize_mac
from .proto.pxe import Client, normalize_uuid, uuid_from_wire

ENTRY_SCRIPT = "boot.ipxe"
CA_BUNDLE = "ca.cpio"
IMAGES = "images"
SCRIPTS = "boot"
PXELINUX_CFG = "pxelinux.cfg"
OVERLAYS = "overlay"
GRUB = "grub"  # the built-in prefix of Debian's signed grubnetx64.efi
GRUB_ENTRY = "grub.cfg"
GRUB_CFG_SUFFIX = ".cfg"
MAX_NAME = 1024

_UUID_LEAF = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class PathRefused(Exception):
    """The request names something outside the namespace; never served."""


@dataclass(frozen=True)
class EntryScript:
    pass


@dataclass(frozen=True)
class CaBundle:
    """`ca.cpio`: the CA(s) the node pins for HTTPS, loaded before the image's initrd."""


@dataclass(frozen=True)
class Script:
    mac: str
    uuid: str | None = None


@dataclass(frozen=True)
class PxelinuxConfig:
    """`mac` and `uuid` both None: the `default` file."""

    mac: str | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class Overlay:
    """A node's rendered overlay archive (`checksum`: its sha256 file)."""

    mac: str
    uuid: str | None = None
    checksum: bool = False


@dataclass(frozen=True)
class GrubConfig:
    """`mac` None: `grub/grub.cfg`, the entry that hands each machine to its own config."""

    mac: str | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class ImageFile:
    image: str
    file: str


@dataclass(frozen=True)
class Loader:
    file: str


Name = EntryScript | CaBundle | Script | PxelinuxConfig | GrubConfig | Overlay | ImageFile | Loader
Asked = Script | PxelinuxConfig | GrubConfig  # a machine's own generated file: decided per request


def client(name: Asked, group: str | None = None) -> Client:
    """The machine a script or config name was asked for, as `policy.decide()` takes it: the
    MAC and UUID the name carries and what it asks for (`Client.asks`), which tells the policy
    the firmware or loader that asks. `group`: that of the subnet the request came from.
    `grub/grub.cfg` names no machine: not asked of the policy."""
    if isinstance(name, Script):
        return Client(name.mac, uuid=name.uuid, group=group, asks="ipxe-script")
    if isinstance(name, GrubConfig):
        if name.mac is None:
            raise ValueError("grub/grub.cfg names no machine")
        return Client(name.mac, uuid=name.uuid, group=group, asks="grub-cfg")
    return Client(name.mac or "", uuid=name.uuid, group=group, asks="pxelinux-cfg")


# -- building -------------------------------------------------------------------
def script(mac: str, uuid: str | None = None) -> str:
    return f"{SCRIPTS}/{mac_hyphen(mac)}/{uuid}.ipxe" if uuid else f"{SCRIPTS}/{mac_hyphen(mac)}.ipxe"


def overlay(mac: str, uuid: str | None = None) -> str:
    base = f"{OVERLAYS}/{mac_hyphen(mac)}"
    return f"{base}/{uuid}.tar" if uuid else f"{base}.tar"


def pxelinux_config(mac: str) -> str:
    return f"{PXELINUX_CFG}/01-{mac_hyphen(mac)}"


def grub_entry() -> str:
    return f"{GRUB}/{GRUB_ENTRY}"


def grub_config(mac: str, uuid: str | None = None) -> str:
    """The name a GRUB config asks for: GRUB prints `$net_default_mac` lower case with colons."""
    mac = normalize_mac(mac)
    return f"{GRUB}/{mac}/{uuid}{GRUB_CFG_SUFFIX}" if uuid else f"{GRUB}/{mac}{GRUB_CFG_SUFFIX}"


def image_file(image: str, file: str) -> str:
    return f"{IMAGES}/{image}/{file}"


# -- parsing ----------------------------------------------------------------------
def split(name: str) -> list[str]:
    """Validate a request path and split it into segments, or raise PathRefused.

    `name` is what the client sent, already percent-decoded once by the HTTP
    layer (TFTP has no encoding). A `%` left after that is refused too, so
    double encoding cannot smuggle `..` past us.
    """
    if not name or len(name) > MAX_NAME:
        raise PathRefused("empty or overlong path")
    if any(c in name for c in ("\\", "\x00", "%")) or any(ord(c) < 0x20 for c in name):
        raise PathRefused("backslash, NUL, control or percent character in path")
    if name.startswith("/"):
        raise PathRefused("absolute path")
    parts = name.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            raise PathRefused("empty, '.' or '..' segment")
    return parts


def parse(name: str) -> Name | None:
    """What a request names; None if the grammar has no such name. Raises PathRefused."""
    parts = split(name)
    head, n = parts[0], len(parts)
    if parts == [ENTRY_SCRIPT]:
        return EntryScript()
    if parts == [CA_BUNDLE]:
        return CaBundle()
    if n == 1:
        return Loader(head)
    if head == SCRIPTS and parts[-1].endswith(".ipxe") and n in (2, 3):
        return _script(parts[1:])
    if head == OVERLAYS and n in (2, 3):
        return _overlay(parts[1:])
    if head == PXELINUX_CFG and n == 2:
        return _pxelinux(parts[1])
    if head == GRUB and n in (2, 3):
        return _grub(parts[1:])
    if head == IMAGES and n == 3:
        return ImageFile(parts[1], parts[2])
    return None


def parse_rooted(name: str) -> Name | None:
    """`parse()` for a TFTP request that may carry GRUB's leading `/` (see the module notes).

    Only `/grub/...`, `/images/...` and `/ca.cpio` may be asked for rooted; any other rooted
    name is refused as an absolute path, exactly as `parse()` refuses it.
    """
    if name.startswith((f"/{GRUB}/", f"/{IMAGES}/")) or name == f"/{CA_BUNDLE}":
        parsed = parse(name[1:])  # validated like any name: `..` and the like still raise
        return parsed if isinstance(parsed, GrubConfig | ImageFile | CaBundle | None) else None
    return parse(name)  # refuses every other absolute path


def _mac(text: str) -> str | None:
    try:
        return normalize_mac(text)
    except BadMac:
        return None


def _mac_uuid(rest: list[str], suffix: str) -> tuple[str, str | None] | None:
    """`<mac><suffix>` or `<mac>/<uuid><suffix>`, as (mac, uuid); None if it is neither."""
    if not rest[-1].endswith(suffix):
        return None
    if len(rest) == 1:
        mac = _mac(rest[0][: -len(suffix)])
        return (mac, None) if mac else None
    mac = _mac(rest[0])
    try:
        uuid = normalize_uuid(rest[1][: -len(suffix)])
    except ValueError:
        return None
    return (mac, uuid) if mac and uuid else None


def _script(rest: list[str]) -> Script | None:
    got = _mac_uuid(rest, ".ipxe")
    return Script(*got) if got else None


def _overlay(rest: list[str]) -> Overlay | None:
    checksum = rest[-1].endswith(".tar.sha256")
    if checksum:
        rest = [*rest[:-1], rest[-1].removesuffix(".sha256")]
    got = _mac_uuid(rest, ".tar")
    return Overlay(got[0], got[1], checksum) if got else None


def _grub(rest: list[str]) -> GrubConfig | None:
    if rest == [GRUB_ENTRY]:
        return GrubConfig()
    if not rest[-1].endswith(GRUB_CFG_SUFFIX):
        return None
    mac = _mac(rest[0][: -len(GRUB_CFG_SUFFIX)] if len(rest) == 1 else rest[0])
    if mac is None:
        return None  # e.g. `grub/x86_64-efi/grub.cfg`, which GRUB tries first
    if len(rest) == 1:
        return GrubConfig(mac)
    try:
        uuid = normalize_uuid(rest[1][: -len(GRUB_CFG_SUFFIX)])
    except ValueError:
        return None
    return GrubConfig(mac, uuid)


def _pxelinux(leaf: str) -> PxelinuxConfig | None:
    if leaf == "default":
        return PxelinuxConfig()
    if leaf.startswith("01-"):
        mac = _mac(leaf[3:])
        return PxelinuxConfig(mac=mac) if mac else None
    if _UUID_LEAF.match(leaf):
        # pxelinux prints option 97's bytes in the order they came, so the
        # first three fields are swapped from the SMBIOS form (proto.pxe).
        uuid = uuid_from_wire(bytes.fromhex(leaf.replace("-", "")))
        return PxelinuxConfig(uuid=uuid) if uuid else None
    return None  # hex-IP names: pxelinux goes on to 01-<mac> or default
