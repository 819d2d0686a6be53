"""MAC address normalisation: every layer keys nodes by `aa:bb:cc:dd:ee:ff`."""

from __future__ import annotations

import re

_HEX12 = re.compile(r"^[0-9a-f]{12}$")
_CANONICAL = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


class BadMac(ValueError):
    pass


def normalize_mac(text: str) -> str:
    """Accept colon, hyphen, dot or bare hex forms (and pxelinux's `01-` prefix)."""
    if _CANONICAL.fullmatch(text):  # already `aa:bb:...` (the hot path: DHCP events)
        return text
    s = text.strip().lower()
    if s.startswith("01-") and len(s) == 20:
        s = s[3:]
    bare = re.sub(r"[:\-.]", "", s)
    if not _HEX12.match(bare):
        raise BadMac(f"not a MAC address: {text!r}")
    return ":".join(bare[i : i + 2] for i in range(0, 12, 2))


def mac_from_bytes(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b[:6])


def mac_hyphen(mac: str) -> str:
    return normalize_mac(mac).replace(":", "-")
