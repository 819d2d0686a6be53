"""A node's BMC as a URL: `ipmi://USER:PASS@HOST[:PORT]`, `redfish://USER:PASS@HOST[:PORT][/redfish/v1/Systems/ID]
[?verify=false]`, `libvirt:DOMAIN[?uri=URI]`.

The password never leaves the store in clear: the node row keeps the URL with the password
cut out (`redacted()`), the password itself is a sealed secret (inventory/sealed.py). A URL
given back with the password shown as `***` (as `node show` and the API print it) keeps the
sealed one, so a read-modify-write through the API does not lose it.

`ipmi://USER:PASS@auto[:PORT]` names the BMC the node itself reported in band (its initramfs
reads `ipmitool lan print` over KCS): the host is taken from the node's latest hardware report
each time the BMC is used (`resolve_auto`), so a BMC that moves is followed at its next report.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, replace

SCHEMES = ("ipmi", "redfish", "libvirt")
HIDDEN = "***"  # what a password is printed as
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SYSTEM = re.compile(r"^/redfish/v1/Systems/[A-Za-z0-9._~-]{1,128}$")
_LIBVIRT_URI = re.compile(r"^[a-z+]+://[A-Za-z0-9._@:/\[\]-]*(\?[A-Za-z0-9._=&/-]*)?$")
_DEFAULT_PORT = {"ipmi": 623, "redfish": 443}
AUTO = "auto"  # the host of `ipmi://USER:PASS@auto`: the address the node reported in band


class BmcError(ValueError):
    """A BMC URL that is not one of the three forms: one line, no password in it."""


class AutoUnresolved(BmcError):
    """`@auto` for a node that has reported no BMC address yet."""

    def __init__(self) -> None:
        super().__init__("its BMC address is 'auto' and the node has not reported one yet (boot it once)")


@dataclass(frozen=True)
class Bmc:
    scheme: str  # ipmi | redfish | libvirt
    host: str = ""  # ipmi, redfish: address or name
    port: int = 0
    user: str = ""
    password: str | None = None  # None: not given (or given as HIDDEN)
    system: str = ""  # redfish: /redfish/v1/Systems/ID; "" = the only system the service lists
    verify: bool = True  # redfish: check the BMC's TLS certificate
    domain: str = ""  # libvirt
    uri: str = ""  # libvirt connection URI ("" = qemu:///system)

    def url(self, password: str | None = None) -> str:
        """The URL with `password` in it (None: without any)."""
        if self.scheme == "libvirt":
            query = f"?uri={urllib.parse.quote(self.uri, safe=':/@+?=&')}" if self.uri else ""
            return f"libvirt:{self.domain}{query}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        cred = urllib.parse.quote(self.user, safe="")
        if password is not None:
            cred += ":" + (password if password == HIDDEN else urllib.parse.quote(password, safe=""))
        port = f":{self.port}" if self.port != _DEFAULT_PORT[self.scheme] else ""
        out = f"{self.scheme}://{cred}@{host}{port}{self.system}"
        return out + ("?verify=false" if not self.verify else "")

    def redacted(self) -> str:
        """What may be stored in the node's row, printed and returned by the API."""
        return self.url(HIDDEN if self.scheme != "libvirt" else None)

    def with_password(self, password: str | None) -> Bmc:
        return replace(self, password=password)

    @property
    def needs_password(self) -> bool:
        return self.scheme != "libvirt"

    @property
    def auto(self) -> bool:
        """Its host is `auto`: the address the node reports in band (`resolve_auto`)."""
        return self.scheme == "ipmi" and self.host == AUTO


def reported_address(v: object) -> str | None:
    """A BMC address as a node reported it, if it is one to talk to: a unicast IP address (not
    unset, loopback, multicast or broadcast); else None."""
    if not isinstance(v, str):
        return None
    try:
        a = ipaddress.ip_address(v.strip())
    except ValueError:
        return None
    if a.is_unspecified or a.is_loopback or a.is_multicast or a == ipaddress.IPv4Address("255.255.255.255"):
        return None
    return str(a)


def resolve_auto(bmc: Bmc, report: dict[str, object] | None) -> Bmc:
    """`bmc` with `auto` replaced by the address in the node's latest hardware report (`report`,
    as stored: `{"bmc": {"ip": …}}`); AutoUnresolved if it has none. Any other BMC as it is."""
    if not bmc.auto:
        return bmc
    found = (report or {}).get("bmc")
    host = reported_address(found.get("ip")) if isinstance(found, dict) else None
    if host is None:
        raise AutoUnresolved()
    return replace(bmc, host=host)


def parse(text: str) -> Bmc:
    """One of the three forms, or BmcError naming what is wrong (never echoing a password)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text) or len(text) > 1024:
        raise BmcError("a BMC URL is one short line")
    if text.startswith("libvirt:"):
        return _libvirt(text)
    u = urllib.parse.urlsplit(text)
    if u.scheme not in ("ipmi", "redfish"):
        raise BmcError("expected ipmi://USER:PASS@HOST[:PORT], redfish://USER:PASS@HOST[:PORT][/redfish/v1/Systems/ID]"
                       " or libvirt:DOMAIN[?uri=URI]")
    if u.fragment:
        raise BmcError(f"{u.scheme}: no #fragment")
    if not u.username:
        raise BmcError(f"{u.scheme}: give the user, {u.scheme}://USER:PASS@HOST")
    try:
        port = u.port or _DEFAULT_PORT[u.scheme]
    except ValueError:
        raise BmcError(f"{u.scheme}: the port is not a number from 1 to 65535") from None
    host = u.hostname or ""
    if not _HOST.match(host):
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise BmcError(f"{u.scheme}: {host!r} is not a host name or address") from None
    password = urllib.parse.unquote(u.password) if u.password is not None else None
    if password in ("", HIDDEN):
        password = None
    user = urllib.parse.unquote(u.username)
    if len(user) > 64 or (password is not None and len(password) > 128):
        raise BmcError(f"{u.scheme}: user or password too long")
    verify, system = True, ""
    if host == AUTO and u.scheme != "ipmi":
        raise BmcError(f"{u.scheme}: @auto is for ipmi:// only (the address a node reports in band is its IPMI"
                       " LAN address; a Redfish password would go to whatever address the node names)")
    if u.scheme == "ipmi":
        if u.path not in ("", "/") or u.query:
            raise BmcError("ipmi: no path or query, only ipmi://USER:PASS@HOST[:PORT]")
        if len(user) > 16 or (password is not None and len(password) > 20):
            raise BmcError("ipmi: IPMI 2.0 allows a user of 16 and a password of 20 characters at most")
    else:
        if u.path not in ("", "/"):
            if not _SYSTEM.match(u.path):
                raise BmcError("redfish: the path, if any, is /redfish/v1/Systems/ID")
            system = u.path
        query = urllib.parse.parse_qs(u.query, keep_blank_values=True)
        if set(query) - {"verify"} or query.get("verify", ["true"]) not in (["true"], ["false"]):
            raise BmcError("redfish: the only query is ?verify=false")
        verify = query.get("verify", ["true"]) == ["true"]
    return Bmc(u.scheme, host=host, port=port, user=user, password=password, system=system, verify=verify)


def _libvirt(text: str) -> Bmc:
    rest = text.removeprefix("libvirt:")
    domain, _, query = rest.partition("?")
    if not _DOMAIN.match(domain):
        raise BmcError("libvirt: the domain is a name (letters, digits, '.', '_', '+', '-')")
    uri = ""
    if query:
        uri = urllib.parse.unquote(query.removeprefix("uri="))  # not parse_qs: a '+' is qemu+ssh's, not a space
        if not query.startswith("uri=") or not _LIBVIRT_URI.match(uri):
            raise BmcError("libvirt: the only query is ?uri=DRIVER://[HOST]/PATH (qemu:///system, say)")
    return Bmc("libvirt", domain=domain, uri=uri)


def redact(text: str) -> str:
    """A stored or given URL with its password hidden (an unparsable one is hidden whole)."""
    try:
        return parse(text).redacted()
    except BmcError:
        return "(not a BMC URL)"
