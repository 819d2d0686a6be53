"""The TOML config, validated by pydantic.

A wrong key or value stops with one line naming the key and what is allowed
(`ConfigError`), never a traceback.
"""

from __future__ import annotations

import ipaddress
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
    # Answer IPv6 router solicitations with an empty RA so iPXE stops waiting
    # for IPv6 (server/ra_server.py). "auto": everyone in full DHCP mode, where ramboot
    # owns the network; in proxy mode only machines PXE-booting through ramboot, by
    # unicast, and never while another router advertises. true: everyone; false: no one.
    answer_router_solicitations: Literal["auto"] | bool = "auto"


class DhcpConfig(_Section):
    mode: Literal["full", "proxy", "off"] = "full"
    range: str | None = None
    lease_time: int = Field(3600, ge=60, le=7 * 24 * 3600)
    router: ipaddress.IPv4Address | None = None
    dns: list[ipaddress.IPv4Address] = []
    domain: str | None = None
    netmask: ipaddress.IPv4Address | None = None

    @field_validator("range")
    @classmethod
    def _range_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        first, sep, last = v.partition("-")
        if not sep:
            raise ValueError("expected FIRST-LAST, e.g. 172.22.33.100-172.22.33.200")
        a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
        if int(b) < int(a):
            raise ValueError("the last address is below the first")
        return f"{a}-{b}"

    def range_bounds(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        assert self.range is not None
        first, _, last = self.range.partition("-")
        return ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)

    @model_validator(mode="after")
    def _full_needs_range(self) -> DhcpConfig:
        if self.mode == "full" and self.range is None:
            raise ValueError("dhcp.mode = \"full\" needs dhcp.range = \"FIRST-LAST\"")
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

    @model_validator(mode="after")
    def _dead_after_heartbeats(self) -> ClusterConfig:
        if self.dead_after < 2 * self.heartbeat:
            raise ValueError("cluster.dead_after must be at least two heartbeats")
        return self


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


class LogConfig(_Section):
    """How `serve` writes its log lines to stderr (docs/config.md)."""

    format: Literal["text", "json"] = "text"


class Config(_Section):
    data_dir: Path = Path("/var/lib/ramboot")
    network: NetworkConfig = NetworkConfig()
    dhcp: DhcpConfig = DhcpConfig(mode="off")
    tftp: TftpConfig = TftpConfig()
    http: HttpConfig = HttpConfig()
    boot: BootConfig = BootConfig()
    database: DatabaseConfig = DatabaseConfig()
    cluster: ClusterConfig = ClusterConfig()
    api: ApiConfig = ApiConfig()
    tls: TlsConfig = TlsConfig()
    security: SecurityConfig = SecurityConfig()
    log: LogConfig = LogConfig()

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
