"""Power across the fleet: which nodes a command means, waves at a rate, one result per node.

Every BMC is asked in its own worker, so one that does not answer costs its own timeout and
nothing else; each action becomes a `power` event in the node's timeline and a count in
`ramboot_power_actions_total`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..inventory.records import EventRecord, NodeSpec
from ..inventory.store import Store
from ..macaddr import BadMac, normalize_mac
from . import TIMEOUT, Driver, PowerError, driver_for

MAX_WORKERS = 64  # BMCs asked at once (with no --rate)


class TargetError(ValueError):
    """A target that names no registered node: one line."""


@dataclass
class Outcome:
    mac: str
    action: str
    ok: bool
    state: str  # on | off | unknown (after the action)
    error: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        if self.action == "status":
            return f"{self.mac} {self.state}" + (f": {self.error}" if self.error else "")
        if self.ok:
            return f"{self.mac} {self.action}: ok, now {self.state}"
        return f"{self.mac} {self.action}: FAILED: {self.error}"

    def as_json(self) -> dict:
        return {"mac": self.mac, "action": self.action, "ok": self.ok, "state": self.state, "error": self.error or None,
                "seconds": round(self.seconds, 3)}


def targets(store: Store, names: tuple[str, ...], all_: bool, labels: dict[str, str]) -> list[NodeSpec]:
    """The nodes meant: each MAC or hostname named, every node (`all_`), those with every label;
    in MAC order, each once. A name that matches nothing is an error (a typo powers nothing)."""
    nodes = store.list_nodes()
    chosen: dict[str, NodeSpec] = {}
    by_host = {n.hostname: n for n in nodes if n.hostname}
    by_mac = {n.mac: n for n in nodes}
    for name in names:
        try:
            found = by_mac.get(normalize_mac(name))
        except BadMac:
            found = by_host.get(name)
        if found is None:
            raise TargetError(f"{name}: no registered node has this MAC or hostname")
        chosen[found.mac] = found
    if all_ or labels:
        for n in nodes:
            if all(str(n.labels.get(k)) == v for k, v in labels.items()):
                chosen[n.mac] = n
    return [chosen[m] for m in sorted(chosen)]


def act(driver: Driver, action: str) -> str:
    """One action on one BMC; the power state after it."""
    if action != "status":
        driver.power(action)
    return driver.status()


def record(store: Store, mac: str, action: str, ok: bool, detail: dict) -> None:
    """The node's timeline gets the action (a status read is only counted) and the counter its result."""
    store.count_power(action, "ok" if ok else "error")
    if action != "status":
        detail = {"action": action, "result": "ok" if ok else "error", **detail}
        store.add_events([EventRecord(mac, "power", time.time(), "server", detail)])


def run(store: Store, nodes: list[NodeSpec], action: str, rate: float | None = None, timeout: float = TIMEOUT,
        step: Callable[[Driver], str] | None = None) -> Iterator[Outcome]:
    """Each node's outcome as it comes. `rate`: nodes started per second (waves, so a rack does not
    draw its inrush at once); `step`: what to do with each driver (default: `action`, then read the state)."""
    do = step or (lambda d: act(d, action))
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, max(1, len(nodes)))) as pool:
        futures: list[tuple[NodeSpec, float, Future]] = []
        t0 = time.monotonic()
        for i, node in enumerate(nodes):
            if rate:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            futures.append((node, time.monotonic(), pool.submit(_one, store, node, do, timeout)))
        for node, started, fut in futures:
            state, error = fut.result()
            ok = not error
            seconds = time.monotonic() - started
            if not (error and error.startswith("no BMC")):
                record(store, node.mac, action, ok, {"state": state, **({"error": error} if error else {})})
            yield Outcome(node.mac, action, ok, state, error, seconds)


def _one(store: Store, node: NodeSpec, do: Callable[[Driver], str], timeout: float) -> tuple[str, str]:
    try:
        bmc = store.bmc(node.mac)
    except Exception as e:  # a sealed password that does not open: this node only
        return "unknown", f"its BMC credentials do not open: {e}"
    if bmc is None:
        return "unknown", "no BMC registered (node add MAC --bmc URL)"
    try:
        return do(driver_for(bmc, timeout)), ""
    except PowerError as e:
        return "unknown", str(e)
