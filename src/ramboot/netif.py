"""What the kernel knows about a network interface (its IPv4 address and mask, its MAC)."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


def _ioctl_ipv4(ifname: str, request: int) -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("256s", ifname.encode()[:15])
        return socket.inet_ntoa(fcntl.ioctl(s.fileno(), request, req)[20:24])
    except OSError:
        return None
    finally:
        s.close()


def interface_ipv4(ifname: str) -> str | None:
    """The interface's first IPv4 address, or None if it has none or does not exist."""
    return _ioctl_ipv4(ifname, SIOCGIFADDR)


def interface_exists(ifname: str) -> bool:
    """Whether this network namespace has an interface of that name."""
    try:
        socket.if_nametoindex(ifname)
    except (OSError, ValueError):
        return False
    return True


def interface_netmask(ifname: str) -> str | None:
    return _ioctl_ipv4(ifname, SIOCGIFNETMASK)


def interface_mac(ifname: str) -> bytes | None:
    """The interface's hardware address (6 bytes for Ethernet), or None if unreadable."""
    try:
        with open(f"/sys/class/net/{ifname}/address") as f:
            return bytes.fromhex(f.read().strip().replace(":", ""))
    except (OSError, ValueError):
        return None
