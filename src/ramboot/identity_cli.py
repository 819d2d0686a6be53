"""`ramboot overlay render` and `ramboot ssh known-hosts`: what a node gets, seen from the server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .config import ConfigError, load_config
from .macaddr import BadMac, normalize_mac

if TYPE_CHECKING:
    from .config import Config
    from .inventory.store import Store
    from .policy import Booter

DEFAULT_CONFIG = "/etc/ramboot/ramboot.toml"


def _local(config_path: str) -> tuple[Config, Store, Booter]:
    """The config, store and booter of a local data directory."""
    from .inventory.store import Store
    from .policy import Booter

    try:
        config = load_config(config_path)
        store = Store.for_config(config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    address = str(config.network.address) if config.network.address else "127.0.0.1"
    return config, store, Booter(config, store.directory, address)


@click.group()
def overlay() -> None:
    """Per-node overlays: trees in DATA/overlays/NAME/, `.j2` files rendered with Jinja2."""


@overlay.command()
@click.argument("name")
@click.argument("mac")
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="TOML config")
def render(name: str, mac: str, config_path: str) -> None:
    """Print each file of overlay NAME as node MAC gets it: its path, then its content."""
    from .overlays import OverlayError, OverlayRenderer, addresses, node_context
    from .proto.pxe import Client

    try:
        mac = normalize_mac(mac)
    except BadMac as e:
        raise click.BadParameter(str(e), param_hint="MAC") from None
    config, store, booter = _local(config_path)
    try:
        d = booter.decide(Client(mac))
        if d is None:
            raise click.ClickException(f"{mac} is not registered and [boot] unknown_nodes is \"ignore\": "
                                       "it boots nothing")
        renderer = OverlayRenderer(Path(config.data_dir), store, booter.catalog)
        addr = addresses(store)
        nodes = [node_context(n, n.mac, addr.get(n.mac)) for n in store.nodes.all()]
        spec = store.nodes.get(d.node) if d.node else None
        me = node_context(spec, d.node or mac, addr.get(mac), d)
        files = renderer.tree(name, me, nodes)
    except OverlayError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    for f in files:
        if f.data is None and f.link is None:
            continue
        click.echo(f"==> /{f.path} ({f.mode:04o}" + (f", link to {f.link})" if f.link is not None else ")"))
        if f.data is not None:
            click.echo(f.data.decode(errors="replace"), nl=not f.data.endswith(b"\n"))


@click.group()
def ssh() -> None:
    """SSH trust: the nodes' host keys are certified by ramboot's CA."""


@ssh.command("known-hosts")
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="TOML config")
def known_hosts(config_path: str) -> None:
    """Print the `@cert-authority` line that makes the nodes' host keys trusted, for the
    cluster's names and addresses only (run it again after adding nodes, or set [dhcp] domain)."""
    from .identity import Identities, IdentityError, cluster_patterns
    from .overlays import addresses

    config, store, _booter = _local(config_path)
    try:
        nodes = store.nodes.all()
        addr = addresses(store)  # fixed, else the hardware lease; of registered nodes only
        patterns = cluster_patterns([n.hostname for n in nodes], [addr[n.mac] for n in nodes if n.mac in addr],
                                    config.dhcp.domain)
        if not patterns:
            raise click.ClickException("no registered node has a hostname or an address yet, and [dhcp] domain "
                                       "is not set: the CA line would name no host")
        click.echo(Identities(store.secrets).known_hosts_line(patterns))
    except IdentityError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
