"""`ramboot power ACTION TARGET…`, and the lifecycle commands on a node: `node reprovision`,
`node boot-once`, `node console`. They act on the local store (`--config`), where the BMC
credentials are sealed, and talk to the BMCs from this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click

from ..config import ConfigError, load_config
from ..inventory.cli import _mac  # one MAC argument check for every command
from ..inventory.records import NodeSpec
from ..inventory.store import Store
from ..inventory.timeline import last_boot
from . import ACTIONS, TIMEOUT, Driver, PowerError, driver_for
from .bmc import AutoUnresolved
from .fleet import Outcome, TargetError, record, run, targets


def _store(config_path: str) -> Store:
    try:
        return Store.for_config(load_config(config_path))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


_config = click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                       help="TOML config (the store with the nodes and their sealed BMC credentials)")


@click.command()
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("names", nargs=-1, metavar="TARGET...")
@click.option("--all", "all_", is_flag=True, help="every registered node")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="nodes with this label (repeatable: all)")
@click.option("--rate", type=click.FloatRange(min=0.01), default=None,
              help="nodes started per second (waves; default: all at once)")
@click.option("--timeout", type=click.FloatRange(min=1), default=TIMEOUT, show_default=True,
              help="seconds each BMC gets to answer")
@click.option("--json", "as_json", is_flag=True, help="one JSON list of results on stdout")
@_config
def power(action: str, names: tuple[str, ...], all_: bool, labels: tuple[str, ...], rate: float | None,
          timeout: float, as_json: bool, config_path: str) -> None:
    """Power nodes on, off, cycle or reset them through their BMCs, or read their power state.

    A TARGET is a MAC or a hostname. Each node's BMC is asked on its own: one that does not
    answer is one line, and the others go on. Exits 1 if any node failed."""
    pairs: dict[str, str] = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--label")
        pairs[k] = v
    if not (names or all_ or pairs):
        raise click.UsageError("name a TARGET (MAC or hostname), or give --all or --label K=V")
    store = _store(config_path)
    try:
        nodes = targets(store, names, all_, pairs)
    except TargetError as e:
        raise click.ClickException(str(e)) from None
    if not nodes:
        raise click.ClickException("no registered node matches")
    results: list[Outcome] = []
    for out in run(store, nodes, action, rate, timeout):
        results.append(out)
        if not as_json:
            click.echo(out.line(), err=not out.ok and action != "status")
    if as_json:
        click.echo(json.dumps([r.as_json() for r in results], indent=1))
    if not all(r.ok for r in results):
        sys.exit(1)


def _node_with_bmc(store: Store, mac: str) -> NodeSpec:
    spec = store.nodes.get(mac)
    if spec is None:
        raise click.ClickException(f"no node {mac}")
    return spec


def _driver(store: Store, mac: str, timeout: float = TIMEOUT) -> Driver:
    try:
        bmc = store.power.bmc(mac)
    except AutoUnresolved as e:
        raise click.ClickException(f"{mac}: {e}") from None
    except Exception as e:
        raise click.ClickException(f"{mac}: its BMC credentials do not open: {e}") from None
    if bmc is None:
        raise click.ClickException(f"{mac}: no BMC registered (node add {mac} --bmc URL, or a profile's --bmc)")
    try:
        return driver_for(bmc, timeout)
    except PowerError as e:
        raise click.ClickException(f"{mac}: {e}") from None


def _image_exists(config_path: str, image: str) -> None:
    from ..images.manifest import ManifestError, load_manifest

    try:
        load_manifest(load_config(config_path).data_dir, image)
    except ManifestError as e:
        raise click.BadParameter(str(e), param_hint="--image") from None


def _power_up(store: Store, mac: str, driver: Driver, action: str = "cycle") -> float:
    """The node's next boot is a network boot, then `action`; returns when it was done (epoch)."""
    try:
        driver.boot_network_once()
    except PowerError as e:  # ipmi_sim and some BMCs refuse it: a diskless node boots from the network anyway
        click.echo(f"warning: {mac}: the BMC did not take a network boot for the next boot ({e}); "
                   f"powering on anyway", err=True)
    at = time.time()
    try:
        driver.power(action)  # a cycle of a node that is off powers it on
    except PowerError as e:
        record(store, mac, action, False, {"state": "unknown", "error": str(e)})
        raise click.ClickException(f"{mac}: {e}") from None
    record(store, mac, action, True, {"state": "on"})
    return at


def wait_booted(store: Store, mac: str, since: float, timeout: float, image: str | None = None) -> tuple[bool, str]:
    """Until the node reports `booted` in a boot after `since` (and of `image`, if named);
    (False, the last stage) on a failure or the timeout."""
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    while True:
        events = [e for e in store.events.of(mac, limit=400) if e.at >= since]
        boot = last_boot(events)
        if boot is not None:
            last = boot.stage
            if boot.stage == "booted":
                ran = [str(e.detail.get("url") or e.detail.get("file") or "") for e in boot.events]
                if image is None or any(f"images/{image}/" in r for r in ran):
                    return True, "booted"
                last = "booted another image"
            elif boot.stage == "failed":
                return False, f"failed: {boot.failure}"
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(1.0)


@click.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@click.option("--image", help="boot this image from now on (default: the node's own)")
@click.option("--wait", is_flag=True, help="exit 0 only once the node reports booted")
@click.option("--timeout", type=click.FloatRange(min=1), default=900.0, show_default=True,
              help="seconds --wait waits")
@_config
def reprovision(mac: str, image: str | None, wait: bool, timeout: float, config_path: str) -> None:
    """Set the node's image, make its next boot a network boot, and power-cycle it."""
    store = _store(config_path)
    spec = _node_with_bmc(store, mac)
    driver = _driver(store, mac)
    if image:
        _image_exists(config_path, image)
        spec.image = image
        store.nodes.put(spec)  # its BMC URL reads back with *** for the password, which keeps the sealed one
    t0 = time.monotonic()
    since = _power_up(store, mac, driver)
    click.echo(f"{mac}: network boot next, power cycled" + (f"; image {image}" if image else ""))
    if not wait:
        return
    ok, last = wait_booted(store, mac, since, timeout, image or spec.image)
    if not ok:
        raise click.ClickException(f"{mac}: not booted after {time.monotonic() - t0:.0f} s; last stage: {last}")
    click.echo(f"{mac}: booted in {time.monotonic() - t0:.1f} s")


@click.command("boot-once")
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@click.option("--image", required=True, help="the image of the next boot only")
@click.option("--now", is_flag=True, help="and power-cycle the node through its BMC")
@click.option("--clear", is_flag=True, help="forget a boot-once image not used yet")
@_config
def boot_once(mac: str, image: str, now: bool, clear: bool, config_path: str) -> None:
    """The node's next boot only is of another image (an installer, a memory test); once that
    boot reports booted, the node boots its own image again."""
    store = _store(config_path)
    _node_with_bmc(store, mac)
    if clear:
        store.nodes.set_boot_once(mac, None)
        click.echo(f"{mac}: no boot-once image")
        return
    _image_exists(config_path, image)
    store.nodes.set_boot_once(mac, image)
    click.echo(f"{mac}: next boot only: image {image}")
    if now:
        _power_up(store, mac, _driver(store, mac))
        click.echo(f"{mac}: network boot next, power cycled")


@click.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@_config
def console(mac: str, config_path: str) -> None:
    """Attach this terminal to the node's serial console (IPMI Serial-over-LAN, the libvirt
    console, or the SSH serial console a Redfish BMC offers)."""
    store = _store(config_path)
    _node_with_bmc(store, mac)
    driver = _driver(store, mac)
    try:
        argv = driver.console_argv()
    except PowerError as e:
        raise click.ClickException(f"{mac}: {e}") from None
    bmc = store.power.bmc(mac)
    env = dict(os.environ)
    if bmc is not None and bmc.password is not None:
        env["IPMI_PASSWORD"] = bmc.password  # ipmitool -E: never on a command line
    sys.exit(subprocess.call(argv, env=env))
