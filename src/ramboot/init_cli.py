"""`ramboot init`: write a working config for one interface, the first step after installing the package.

The mode follows `doctor`'s probe: another DHCP server handing out addresses on the
link means ramboot must not hand out its own (proxy); otherwise it runs the subnet (full).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import click

from . import __version__
from .config import ConfigError, parse_config
from .doctor import DEFAULT_CONFIG, ipv4_addrs, probe_dhcp

# What the package ships as /etc/ramboot/ramboot.toml (a conffile). `init` replaces
# this exact text without --force: it holds no choice of the operator's.
PACKAGED_CONFIG = """\
# ramboot's config. Not configured yet: write one for the provisioning interface with
#   ramboot init --interface IF
# then start the service: systemctl enable --now ramboot. Keys: docs/config.md.
data_dir = "/var/lib/ramboot"

[dhcp]
mode = "off"
"""


def default_router(ifname: str) -> ipaddress.IPv4Address | None:
    """The gateway of a default route through ifname, if any: the range must not hand it out."""
    p = subprocess.run(["ip", "-j", "-4", "route", "show", "default", "dev", ifname], capture_output=True, text=True)
    try:
        routes = json.loads(p.stdout or "[]")
    except ValueError:
        return None
    for r in routes:
        if r.get("gateway"):
            return ipaddress.IPv4Address(r["gateway"])
    return None


def pick_range(iface: ipaddress.IPv4Interface,
               avoid: set[ipaddress.IPv4Address]) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None:
    """The longest run of host addresses in iface's subnet that holds none of `avoid` (ties: the higher run)."""
    net = iface.network
    if net.num_addresses < 4:
        return None
    first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
    cuts = sorted(int(a) for a in avoid if first <= int(a) <= last)
    best: tuple[int, int] | None = None
    start = first
    for c in [*cuts, last + 1]:
        if c - 1 >= start and (best is None or c - 1 - start >= best[1] - best[0]):
            best = (start, c - 1)
        start = c + 1
    if best is None:
        return None
    return ipaddress.IPv4Address(best[0]), ipaddress.IPv4Address(best[1])


def config_text(ifname: str, iface: ipaddress.IPv4Interface, mode: str, data_dir: Path,
                router: ipaddress.IPv4Address | None, rng: tuple[ipaddress.IPv4Address, ...] | None) -> str:
    lines = [f"# Written by `ramboot init --interface {ifname}` (ramboot {__version__}). Keys: docs/config.md.",
             f"data_dir = {json.dumps(str(data_dir))}", "", "[network]", f'interface = "{ifname}"',
             f'address = "{iface.ip}"', "", "[dhcp]", f'mode = "{mode}"']
    if mode == "full":
        assert rng is not None
        lines.append(f'range = "{rng[0]}-{rng[1]}"')
        lines.append(f'netmask = "{iface.netmask}"')
        if router is not None:
            lines.append(f'router = "{router}"')
    else:
        lines.append("# another DHCP server hands out addresses on this link: ramboot only answers PXE requests")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--interface", "ifname", required=True, help="the provisioning interface (it must have an IPv4 address)")
@click.option("--mode", type=click.Choice(["full", "proxy"]),
              help="full: hand out addresses; proxy: beside another DHCP server (default: probe the link)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="where to write the config")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/var/lib/ramboot"),
              show_default=True, help="images, loaders and the node database")
@click.option("--force", is_flag=True, help="overwrite an existing config")
@click.option("--probe-seconds", type=float, default=3.0, show_default=True,
              help="how long to listen for other DHCP servers when --mode is not given")
def init(ifname: str, mode: str | None, config_path: Path, data_dir: Path, force: bool, probe_seconds: float) -> None:
    """Write a working config for INTERFACE: its address, a DHCP range in its subnet, and the mode."""
    if not Path("/sys/class/net", ifname).exists():
        raise click.ClickException(f"interface {ifname!r} does not exist (`ip link` lists them)")
    addrs = [a for a in ipv4_addrs(ifname) if not a.ip.is_link_local]
    if not addrs:
        raise click.ClickException(f"{ifname} has no IPv4 address: give it one (ip addr add A.B.C.D/N dev {ifname})")
    if config_path.exists() and not force:
        try:
            packaged = config_path.read_text() == PACKAGED_CONFIG
        except OSError:
            packaged = False
        if not packaged:
            raise click.ClickException(f"{config_path} exists: give --force to overwrite it")
    iface = addrs[0]
    router = default_router(ifname)
    if mode is None:
        ours = {str(a.ip) for a in addrs}
        try:
            answers = [a for a in probe_dhcp(ifname, probe_seconds) if a[0] not in ours and a[1] not in ours]
        except OSError as e:
            raise click.ClickException(f"cannot probe for DHCP servers on {ifname} ({e.strerror}): "
                                       "run as root while port 68 is free, or give --mode") from None
        leasing = [a for a in answers if a[2]]
        mode = "proxy" if leasing else "full"
        click.echo(f"DHCP servers handing out addresses on {ifname}: {', '.join(a[0] for a in leasing) or 'none'}"
                   f" -> mode {mode}")
    rng = None
    if mode == "full":
        rng = pick_range(iface, {iface.ip, *(a.ip for a in addrs)} | ({router} if router else set()))
        if rng is None:
            raise click.ClickException(f"{iface.network} on {ifname} has no room for a DHCP range: "
                                       "give the interface a larger subnet, or --mode proxy")
    text = config_text(ifname, iface, mode, data_dir.absolute(), router, rng)
    try:
        parse_config(text, str(config_path))
    except ConfigError as e:  # a bug here, not the operator's: say so in one line all the same
        raise click.ClickException(f"the config init would write does not load: {e}") from None
    try:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = config_path.with_name(config_path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)  # the service's dynamic user reads it
        tmp.replace(config_path)
    except OSError as e:
        raise click.ClickException(f"cannot write {config_path}: {e.strerror}") from None
    click.echo(f"wrote {config_path}: {ifname} {iface}, mode {mode}" + (f", range {rng[0]}-{rng[1]}" if rng else ""))
