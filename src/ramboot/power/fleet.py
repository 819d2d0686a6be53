"""Power across the fleet: which nodes a command means, waves at a rate, one result per node.

Every BMC is asked in its own worker, so one that does not answer costs its own timeout and
nothing else; each action becomes a `power` event in the node's timeline and a count in
`ramboot_power_actions_total`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..inventory.records import EventRecord, NodeSpec
from ..inventory.store import Store
from ..macaddr import BadMac, normalize_mac
from . import TIMEOUT, Driver, PowerError, driver_for
from .bmc import AutoUnresolved

MAX_WORKERS = 64  # BMCs asked at once
# Errors before any BMC was asked: no power event for them (they are counted still).
_NOTHING_ASKED = ("no BMC", str(AutoUnresolved()))


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

    def as_json(self) -> dict[str, object]:
        return {"mac": self.mac, "action": self.action, "ok": self.ok, "state": self.state, "error": self.error or None,
                "seconds": round(self.seconds, 3)}


def targets(store: Store, names: tuple[str, ...], all_: bool, labels: dict[str, str]) -> list[NodeSpec]:
    """The nodes meant: each MAC or hostname named, every node (`all_`), those with every label;
    in MAC order, each once. A name that matches nothing is an error (a typo powers nothing)."""
    nodes = store.nodes.all()
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


def record(store: Store, mac: str, action: str, ok: bool, detail: dict[str, Any]) -> None:
    """The node's timeline gets the action (a status read is only counted) and the counter its result."""
    store.power.count(action, "ok" if ok else "error")
    if action != "status":
        detail = {"action": action, "result": "ok" if ok else "error", **detail}
        store.events.add([EventRecord(mac, "power", time.time(), "server", detail)])


def run(store: Store, nodes: list[NodeSpec], action: str, rate: float | None = None, timeout: float = TIMEOUT,
        step: Callable[[Driver], str] | None = None) -> Iterator[Outcome]:
    """Each node's outcome as it comes. `rate`: nodes started per second (waves, so a rack does not
    draw its inrush at once); `step`: what to do with each driver (default: `action`, then read the state).

    Each node is asked in a daemon thread, at most MAX_WORKERS at once, within `budget(timeout)`:
    a BMC whose library hangs past it is reported as not answering and never holds the command up."""
    do = step or (lambda d: act(d, action))
    limit = budget(timeout)
    done: queue.Queue[tuple[int, str, str]] = queue.Queue()
    started: dict[int, float] = {}
    slots = threading.Semaphore(MAX_WORKERS)

    def ask(i: int) -> None:
        try:
            done.put((i, *_one(store, nodes[i], do, timeout)))
        finally:
            slots.release()

    def starter() -> None:
        t0 = time.monotonic()
        for i in range(len(nodes)):
            if rate:
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            slots.acquire()
            started[i] = time.monotonic()
            threading.Thread(target=ask, args=(i,), name=f"power-{nodes[i].mac}", daemon=True).start()

    threading.Thread(target=starter, name="power-waves", daemon=True).start()
    pending = set(range(len(nodes)))
    while pending:
        try:
            i, state, error = done.get(timeout=0.2)
        except queue.Empty:
            now = time.monotonic()
            late = sorted(j for j in pending if j in started and now - started[j] > limit)
            if not late:
                continue
            i, state, error = late[0], "unknown", f"no answer within {limit:.0f} s"
        if i not in pending:
            continue  # it answered after it was given up on
        pending.discard(i)
        node = nodes[i]
        if not error.startswith(_NOTHING_ASKED):
            record(store, node.mac, action, not error, {"state": state, **({"error": error} if error else {})})
        yield Outcome(node.mac, action, not error, state, error, time.monotonic() - started[i])


def budget(timeout: float) -> float:
    """The most one node may take: a state read, the action, and the wait for its new state."""
    return 3 * timeout + 5


def _one(store: Store, node: NodeSpec, do: Callable[[Driver], str], timeout: float) -> tuple[str, str]:
    try:
        bmc = store.power.bmc(node.mac)
    except AutoUnresolved as e:  # @auto before the node's first report: nothing to ask
        return "unknown", str(e)
    except Exception as e:  # a sealed password that does not open: this node only
        return "unknown", f"its BMC credentials do not open: {e}"
    if bmc is None:
        return "unknown", "no BMC registered (node add MAC --bmc URL)"
    try:
        return do(driver_for(bmc, timeout)), ""
    except PowerError as e:
        return "unknown", str(e)
