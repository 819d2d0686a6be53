"""RFC 5970 (DHCPv6 options for network boot) through the core and the real policy: which boot
file URL (59) and vendor class (16) each client gets, from its architecture (61), vendor class
(16) and user class (15)."""

from __future__ import annotations

import struct

import pytest

from ramboot.proto.dhcp6_codec import (
    ENTERPRISE_UEFI,
    Message,
    Msg,
    Opt,
    client_arches,
    decode,
    encode_vendor_class,
    vendor_class,
)
from ramboot.proto.dhcp6_core import client_of
from ramboot.proto.pxe import Firmware
from test_rfc8415_dhcp6 import MAC, SERVER6, answer, ia, make_core, msg


def arch(n: int) -> tuple[int, bytes]:
    return Opt.CLIENT_ARCH_TYPE, struct.pack("!H", n)


def vclass(text: bytes) -> tuple[int, bytes]:
    return Opt.VENDOR_CLASS, encode_vendor_class(ENTERPRISE_UEFI, text)


SCRIPT = f"http://[{SERVER6}]/boot/52-54-00-12-34-56.ipxe"
CASES = [
    # (id, options, boot file URL, vendor class sent back)
    ("os", [], None, None),
    ("uefi-pxe", [arch(7), vclass(b"PXEClient:Arch:00007:UNDI:003016")], f"tftp://[{SERVER6}]/snponly.efi", None),
    ("uefi-pxe-arch9", [arch(9), vclass(b"PXEClient:Arch:00009:UNDI:003016")], f"tftp://[{SERVER6}]/snponly.efi",
     None),
    ("uefi-http", [arch(16), vclass(b"HTTPClient:Arch:00016:UNDI:003001")], f"http://[{SERVER6}]/snponly.efi",
     b"HTTPClient"),
    ("ipxe", [(Opt.USER_CLASS, struct.pack("!H", 4) + b"iPXE")], SCRIPT, None),
    ("ipxe-after-uefi", [arch(7), (Opt.USER_CLASS, struct.pack("!H", 4) + b"iPXE")], SCRIPT, None),
]


@pytest.mark.parametrize("name, opts, url, back", CASES, ids=[c[0] for c in CASES])
def test_rfc5970_boot_file_url_per_client(tmp_path, name, opts, url, back):
    core = make_core(tmp_path)
    _, [adv] = answer(core, msg(Msg.SOLICIT, ia(), *opts))
    got = adv.get(Opt.BOOTFILE_URL)
    assert (got.decode() if got else None) == url
    vc = adv.get(Opt.VENDOR_CLASS)
    # edk2's PXE takes an offer with "PXEClient" as a BINL offer and asks on port 4011: never sent
    assert (vendor_class(vc)[1][0] if vc else None) == back


def test_rfc5970_s3_3_client_arch_list():
    assert client_arches(struct.pack("!HH", 7, 16)) == [7, 16]
    assert client_arches(b"\x00") == []  # an odd byte is no type


@pytest.mark.parametrize("opts, fw", [
    ([arch(7), vclass(b"PXEClient:Arch:00007")], Firmware.UEFI),
    ([arch(16), vclass(b"HTTPClient:Arch:00016")], Firmware.UEFI_HTTP),
    ([(Opt.USER_CLASS, struct.pack("!H", 4) + b"iPXE")], Firmware.IPXE),
])
def test_rfc5970_the_client_the_policy_sees(opts, fw):
    m = decode(msg(Msg.SOLICIT, *opts))
    assert isinstance(m, Message)
    c = client_of(m, MAC, b"")
    assert c.firmware is fw and c.is_pxe and c.mac == MAC

