"""The TOML config, validated by pydantic.

A wrong key or value stops with one line naming the key and what is allowed
(`ConfigError`), never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A config problem, already phrased as one line for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkConfig(_Section):
    interface: str = "rb0"
    address: ipaddress.IPv4Address | None = None
    # What IPv6 clients are told (DHCPv6, RAs, URLs); default: the interface's first global IPv6.
    address6: ipaddress.IPv6Address | None = None
    # Answer IPv6 router solicitations with an empty RA so iPXE stops waiting
    # for IPv6 (server/ra_server.py). "auto": everyone in full DHCP mode, where ramboot
    # owns the network; in proxy mode only machines PXE-booting through ramboot, by
    # unicast, and never while another router advertises. true: everyone; false: no one.
    answer_router_solicitations: Literal["auto"] | bool = "auto"


def _range_text(v: str) -> str:
    first, sep, last = v.partition("-")
    if not sep:
        raise ValueError("expected FIRST-LAST, e.g. 172.22.33.100-172.22.33.200")
    a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
    if int(b) < int(a):
        raise ValueError("the last address is below the first")
    return f"{a}-{b}"


def _bounds(v: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    first, _, last = v.partition("-")
    return ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)


def _group_name(v: str | None) -> str | None:
    if v is not None and not _GROUP.fullmatch(v):
        raise ValueError("a group is 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return v


_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class SubnetConfig(_Section):
    """One `[[dhcp.subnet]]`: a range and what its clients are told; `group` names its rack
    (or row): the servers of that group come first in its nodes' mirror lists."""

    range: str
    netmask: ipaddress.IPv4Address | None = None  # default: the interface's when it holds the range, else /24
    router: ipaddress.IPv4Address | None = None
    dns: list[ipaddress.IPv4Address] = []
    domain: str | None = None
    group: str | None = None

    _range_ok = field_validator("range")(classmethod(lambda cls, v: _range_text(v)))
    _group_ok = field_validator("group")(classmethod(lambda cls, v: _group_name(v)))

    def range_bounds(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        return _bounds(self.range)

    def network(self) -> ipaddress.IPv4Network:
        """The subnet: the range's first address under `netmask`, or under the widest
        prefix up to /24 that holds the range."""
        first, last = self.range_bounds()
        if self.netmask is not None:
            return ipaddress.IPv4Network(f"{first}/{self.netmask}", strict=False)
        prefix = min(24, min(n.prefixlen for n in ipaddress.summarize_address_range(first, last)))
        while last not in ipaddress.IPv4Network(f"{first}/{prefix}", strict=False):
            prefix -= 1
        return ipaddress.IPv4Network(f"{first}/{prefix}", strict=False)


class DhcpConfig(_Section):
    mode: Literal["full", "proxy", "off"] = "full"
    range: str | None = None
    lease_time: int = Field(3600, ge=60, le=7 * 24 * 3600)
    router: ipaddress.IPv4Address | None = None
    dns: list[ipaddress.IPv4Address] = []
    domain: str | None = None
    netmask: ipaddress.IPv4Address | None = None
    group: str | None = None  # the group of the one-range form's subnet
    subnet: list[SubnetConfig] = []  # [[dhcp.subnet]]: more subnets, reached through relays or directly

    _range_ok = field_validator("range")(classmethod(lambda cls, v: None if v is None else _range_text(v)))
    _group_ok = field_validator("group")(classmethod(lambda cls, v: _group_name(v)))

    def range_bounds(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        assert self.range is not None
        return _bounds(self.range)

    def subnets(self) -> list[SubnetConfig]:
        """Every subnet served: the one-range form (`[dhcp] range` and its router, dns, domain)
        first, then the `[[dhcp.subnet]]` tables."""
        top = [SubnetConfig(range=self.range, netmask=self.netmask, router=self.router, dns=self.dns,
                            domain=self.domain, group=self.group)] if self.range else []
        return top + self.subnet

    def group_of(self, ip: str) -> str | None:
        """The group of the subnet that holds `ip`, if any."""
        try:
            a = ipaddress.IPv4Address(ip)
        except ValueError:
            return None
        return next((s.group for s in self.subnets() if a in s.network()), None)

    @model_validator(mode="after")
    def _full_needs_range(self) -> DhcpConfig:
        if self.mode == "full" and self.range is None and not self.subnet:
            raise ValueError("dhcp.mode = \"full\" needs dhcp.range = \"FIRST-LAST\" or [[dhcp.subnet]] tables")
        subnets = self.subnets()
        for i, s in enumerate(subnets):
            net = s.network()
            first, last = s.range_bounds()
            if last not in net:
                raise ValueError(f"subnet {s.range}: the range leaves its subnet {net}")
            for t in subnets[:i]:
                if net.overlaps(t.network()):
                    raise ValueError(f"subnet {s.range}: its subnet {net} overlaps {t.network()} ({t.range})")
        return self


class Dhcp6Config(_Section):
    """DHCPv6 (RFC 8415) where ramboot owns the network; "off" leaves IPv6 to others."""

    mode: Literal["full", "off"] = "off"
    range6: str | None = None
    prefix: ipaddress.IPv6Network | None = None  # the on-link /64 that router advertisements announce
    lease_time: int = Field(3600, ge=60, le=7 * 24 * 3600)
    dns: list[ipaddress.IPv6Address] = []
    domain: str | None = None
    # Router advertisements in full mode carry the prefix and the M flag; a default route
    # only when this is set (the router's lifetime, seconds): ramboot is no router by default.
    router_lifetime: int = Field(0, ge=0, le=9000)

    @field_validator("range6")
    @classmethod
    def _range_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        first, sep, last = v.partition("-")
        if not sep:
            raise ValueError("expected FIRST-LAST, e.g. fd00:172:22:33::100-fd00:172:22:33::1ff")
        a, b = ipaddress.IPv6Address(first.strip()), ipaddress.IPv6Address(last.strip())
        if int(b) < int(a):
            raise ValueError("the last address is below the first")
        return f"{a}-{b}"

    def range_bounds(self) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
        assert self.range6 is not None
        first, _, last = self.range6.partition("-")
        return ipaddress.IPv6Address(first), ipaddress.IPv6Address(last)

    @model_validator(mode="after")
    def _full_needs_range(self) -> Dhcp6Config:
        if self.mode != "full":
            return self
        if self.range6 is None or self.prefix is None:
            raise ValueError('dhcp6.mode = "full" needs dhcp6.range6 = "FIRST-LAST" and dhcp6.prefix = "P/64"')
        first, last = self.range_bounds()
        if first not in self.prefix or last not in self.prefix:
            raise ValueError(f"dhcp6.range6: not inside dhcp6.prefix {self.prefix}")
        return self


class TftpConfig(_Section):
    port: int = Field(69, ge=1, le=65535)
    max_windowsize: int = Field(64, ge=1, le=1024)
    max_blksize: int = Field(65464, ge=512, le=65464)
    max_transfers: int = Field(1024, ge=1)
    max_per_source: int = Field(16, ge=1)
    # Requests whose client has not answered yet (spoofable): above this the oldest is dropped.
    max_unconfirmed: int = Field(256, ge=1)
    # Every transfer's ring together (MiB): windows stop growing, then new transfers wait, above it.
    max_memory_mib: int = Field(256, ge=1, le=65536)
    # Lock-step transfers served each by a thread of its own, off the event loop, while this
    # process has no more transfers than this (more: the loop serves them). 0: all on the loop.
    lockstep_threads: int = Field(4, ge=0, le=256)


class HttpConfig(_Section):
    port: int = Field(80, ge=1, le=65535)
    bind: str = "0.0.0.0"
    # HTTPS for what carries secrets (overlays, node reports) and the API; 0: no TLS listener.
    https_port: int = Field(443, ge=0, le=65535)


class TlsConfig(_Section):
    """The HTTPS listener's certificate. Default: a CA and a server certificate that `serve`
    makes in DATA/tls/ at first start; nodes pin that CA (docs/security.md)."""

    cert: Path | None = None  # PEM: the certificate (and its chain)
    key: Path | None = None  # PEM: its private key
    ca: Path | None = None  # PEM: what nodes pin; default: DATA/tls/ca.pem, or `cert` when the operator gives one

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: give both, or neither")
        return self


class SecurityConfig(_Section):
    """Who gets a node's secrets, and how they travel (docs/security.md)."""

    # proxy and off mode: ramboot sees no lease, so no secret is served unless the operator
    # picks the weaker rule by name: the first claim of a boot's credential wins.
    proxy_secrets: Literal["none", "first-claim"] = "none"
    # Overlays (host keys) and node reports over plain HTTP too, on purpose.
    overlay_over_http: bool = False
    # The key that encrypts secrets at rest in the database; default DATA/secrets.key (0600).
    secrets_key: Path | None = None
    # Leases and offers to machines nobody registered: at most this many at once (0: three
    # quarters of the range, so registered machines always find an address).
    max_unknown_leases: int = Field(0, ge=0)
    # A node's TPM (tpm_gate.py): "manual", its first EK waits for `ramboot node trust MAC`;
    # "first-boot", the first EK seen is trusted. Either way a different EK later is refused.
    tpm_enroll: Literal["manual", "first-boot"] = "manual"
    # Measured boot: the TPM quotes its PCRs (tpm_gate.PCRS) before the boot key is released;
    # the first values per node and image are kept, a boot quoting others gets no key.
    tpm_measured: bool = False


def no_control_chars(v: str) -> str:
    """A value bound for a boot script or a command line: a newline there starts a new
    command (`chain http://evil/...` in iPXE), so any control character is refused."""
    for c in v:
        if ord(c) < 0x20 or ord(c) == 0x7F:
            raise ValueError(f"control character {c!r} not allowed (this value reaches boot scripts and command lines)")
    return v


class BootConfig(_Section):
    default_image: str = "demo"
    unknown_nodes: Literal["boot", "discover", "ignore"] = "boot"
    loader: Literal["ipxe", "pxelinux", "grub"] = "ipxe"
    kernel_args: str = "console=ttyS0,115200 console=tty0"
    profile: str | None = None  # the profile every node gets, before its own

    @field_validator("kernel_args", "default_image", "profile")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        return None if v is None else no_control_chars(v)


# Debian's signed GRUB takes its TFTP server only from the DHCP server's own answer
# (its ACK), never from a proxyDHCP offer, so beside a site DHCP server it stops at
# `grub>` (docs/uefi-bios.md). One line, wherever the combination is asked for.
GRUB_PROXY_REFUSED = (
    'loader "grub" cannot boot with dhcp.mode = "proxy": Debian\'s signed GRUB reads only the site '
    "DHCP server's answer and stops at grub>; use dhcp.mode = \"full\", or loader ipxe"
)


class DatabaseConfig(_Section):
    url: str | None = None  # default: sqlite in data_dir
    # Boot events are pruned hourly: older than this many days, and beyond the newest N per node.
    events_keep_days: float = Field(90.0, gt=0)
    events_keep_per_node: int = Field(5000, ge=100)
    # Machines only seen (DHCP or TFTP asked, never registered, never reported): their events go after this.
    seen_keep_days: float = Field(1.0, gt=0)
    # Hardware reports: a node's newest N (and none older than events_keep_days).
    inventory_keep_per_node: int = Field(20, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("sqlite", "postgresql", "postgresql+psycopg", "postgres"):
            raise ValueError('expected "sqlite:///PATH" or "postgresql://[USER@]HOST/DB" (also ?host=/socket/dir)')
        return v


class ClusterConfig(_Section):
    """Several servers on one PostgreSQL database (docs/decisions.md, "Several servers")."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # default: host name + address
    heartbeat: float = Field(2.0, ge=0.2, le=60)  # seconds between this server's heartbeats
    dead_after: float = Field(10.0, ge=1, le=600)  # a server silent this long is no longer told to nodes
    # This server's rack (or row): nodes whose subnet has the same `group` name its servers first.
    group: str | None = None

    _group_ok = field_validator("group")(classmethod(lambda cls, v: _group_name(v)))

    @model_validator(mode="after")
    def _dead_after_heartbeats(self) -> ClusterConfig:
        if self.dead_after < 2 * self.heartbeat:
            raise ValueError("cluster.dead_after must be at least two heartbeats")
        return self


class ScaleConfig(_Section):
    """Booted nodes seed their peers (docs/scale.md): a node that verified its root serves it
    from RAM, and the server redirects root downloads to such peers."""

    seed: bool = True
    seed_fanout: int = Field(4, ge=1, le=64)  # downloads one peer serves at a time


class ApiConfig(_Section):
    """Who may use the API (docs/api.md): every read and write takes a token by default."""

    # The admin token; default: the one `serve` keeps in DATA/api-token (made at first start, 0600).
    token: str | None = Field(None, min_length=8)
    read_token: str | None = Field(None, min_length=8)  # read-only: GET routes, /metrics, the event stream
    read_requires_token: bool = True  # false: reads (and /metrics) open to anyone who reaches the server
    # Host names (or addresses) the API also answers to besides the server's own: a request's
    # Host, and its Origin if any, must name one of them (closes CSRF and DNS rebinding).
    allowed_hosts: list[str] = []
    # Node reports (POST /nodes/{mac}/events and /inventory), per source address: a token
    # bucket of `report_burst` requests refilled at `report_rate` a second; over it, 429.
    report_rate: float = Field(10.0, gt=0)
    report_burst: int = Field(60, ge=1)
    max_body_kib: int = Field(1024, ge=1, le=65536)  # any API request body
    max_report_kib: int = Field(64, ge=1, le=65536)  # a node report's body

    @field_validator("token", "read_token")
    @classmethod
    def _token_ok(cls, v: str | None) -> str | None:
        if v is not None and (v != v.strip() or any(not c.isprintable() for c in v)):
            raise ValueError("a token is printable characters with no surrounding space")
        return v

    @model_validator(mode="after")
    def _tokens_differ(self) -> ApiConfig:
        if self.read_token is not None and self.read_token == self.token:
            raise ValueError("api.read_token must differ from api.token")
        return self


class ConsoleConfig(_Section):
    """Console capture (power/console.py): every node with an IPMI or libvirt BMC."""

    capture: bool = False  # keep DATA/consoles/MAC.log and put each boot's lines in its timeline
    max_kib: int = Field(1024, ge=16, le=1 << 20)  # MAC.log is rotated to MAC.log.1 past this size
    lines_per_boot: int = Field(2000, ge=0, le=100_000)  # console lines kept as timeline events per boot


class ServeConfig(_Section):
    """How `serve` uses the machine's cores (docs/config.md, docs/decisions.md "Workers")."""

    # Processes serving HTTP and TFTP, each on its own SO_REUSEPORT socket; DHCP, the API and
    # the status page stay in the main process. None: one per core; 1: one process, as before.
    workers: int | None = Field(None, ge=1, le=256)

    def worker_count(self) -> int:
        return self.workers if self.workers is not None else max(1, os.cpu_count() or 1)


class LogConfig(_Section):
    """How `serve` writes its log lines to stderr (docs/config.md)."""

    format: Literal["text", "json"] = "text"


class Config(_Section):
    data_dir: Path = Path("/var/lib/ramboot")
    network: NetworkConfig = NetworkConfig()
    dhcp: DhcpConfig = DhcpConfig(mode="off")
    dhcp6: Dhcp6Config = Dhcp6Config()
    tftp: TftpConfig = TftpConfig()
    http: HttpConfig = HttpConfig()
    boot: BootConfig = BootConfig()
    database: DatabaseConfig = DatabaseConfig()
    cluster: ClusterConfig = ClusterConfig()
    api: ApiConfig = ApiConfig()
    tls: TlsConfig = TlsConfig()
    security: SecurityConfig = SecurityConfig()
    console: ConsoleConfig = ConsoleConfig()
    scale: ScaleConfig = ScaleConfig()
    log: LogConfig = LogConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _grub_needs_our_dhcp(self) -> Config:
        if self.boot.loader == "grub" and self.dhcp.mode == "proxy":
            raise ValueError(GRUB_PROXY_REFUSED)
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'ramboot.db'}"

    @property
    def secrets_key_path(self) -> Path:
        """The key that seals the database's secrets (inventory/sealed.py)."""
        return self.security.secrets_key or self.data_dir / "secrets.key"


def _one_line(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "literal_error":
        msg = f"must be one of {first['ctx']['expected']}"
    elif first["type"] == "string_pattern_mismatch":  # the only pattern: cluster.name
        msg = f"letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63; got {first['input']!r}"
    return f"{where}: {key}: {msg}"


def parse_config(text: str, where: str = "config") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, where)) from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    return parse_config(text, str(p))
