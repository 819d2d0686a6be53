"""Who is asking, as PXE sees it: RFC 4578 architectures, firmware classes, UUIDs.

Pure values that the DHCP core reads off a request and hands to the policy.
No I/O and no policy: which program a firmware gets is decided elsewhere.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

# RFC 4578 option 93 values (IANA "Processor Architecture Types").
ARCH_BIOS = 0
ARCH_UEFI_IA32 = 6
ARCH_UEFI_X64 = 7
ARCH_UEFI_BC = 9  # EFI byte code; firmwares also send it for x64
ARCH_UEFI_X64_HTTP = 16
UEFI_ARCHES = frozenset({ARCH_UEFI_IA32, ARCH_UEFI_X64, ARCH_UEFI_BC, ARCH_UEFI_X64_HTTP})

# UUIDs that firmwares report when the machine has none: never an identity.
_NO_UUID = frozenset({"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"})


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"
    UEFI_HTTP = "uefi-http"
    IPXE = "ipxe"

# What a TFTP or HTTP request for a generated file asks for (its name says): a machine's iPXE
# script, pxelinux config or GRUB config. The served file's kind carries the same word.
Asks = Literal["ipxe-script", "pxelinux-cfg", "grub-cfg"]


@dataclass(frozen=True)
class Client:
    """What the network tells us about a machine: its NIC, and from DHCP its classes and UUID."""

    mac: str
    arch: int | None = None
    vendor_class: str = ""
    user_class: str = ""
    uuid: str | None = None
    ipxe: bool = False  # user class "iPXE" or option 175 present
    group: str | None = None  # the group (rack) of the subnet it asks from: its mirrors' order
    # What a TFTP or HTTP request asked for, read off its name (`names.client`): an iPXE
    # script, a pxelinux config or a GRUB config. None for DHCP, which tells its firmware instead.
    asks: Asks | None = None

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
        """A PXE or HTTP-boot firmware (or iPXE): the clients that get a boot program."""
        return self.vendor_class.startswith(("PXEClient", "HTTPClient")) or self.ipxe or self.user_class == "iPXE"


@dataclass(frozen=True)
class BootFile:
    """The DHCP answer's boot program: a TFTP file name or an http URL."""

    filename: str
    http: bool  # the client must be told vendor class "HTTPClient" back


def uuid_from_wire(guid: bytes) -> str | None:
    """Option 97's 16 GUID bytes as the UUID that SMBIOS tools print, or None for a null one.

    The PXE spec names no byte order, and RFC 4578 §2.3 points at the EFI GUID
    layout: the first three fields little-endian. Both clients that matter send
    exactly that: iPXE turns its SMBIOS UUID back into that order before
    sending (`uuid_mangle` in its DHCP request), and edk2's PXE copies the
    EFI_GUID from SMBIOS as it lies in memory. `dmidecode`, SeaBIOS and QEMU's
    `-uuid` print the RFC 4122 form, so the first three fields are swapped back.
    """
    if len(guid) != 16:
        return None
    text = str(uuidlib.UUID(bytes_le=bytes(guid)))
    return None if text in _NO_UUID else text


def uuid_to_wire(text: str) -> bytes:
    """The inverse of `uuid_from_wire`: what a firmware puts in option 97 for this UUID."""
    return uuidlib.UUID(text).bytes_le


def normalize_uuid(text: str) -> str | None:
    """A UUID in its lower-case 8-4-4-4-12 form, None for the null ones; ValueError if it is none."""
    out = str(uuidlib.UUID(text.strip()))
    return None if out in _NO_UUID else out
