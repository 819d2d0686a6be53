"""Boot timelines: a node's event stream cut into boots, and each boot summed up.

One place decides where a boot starts and what stage it has reached, so the
API, the CLI, the status page and the metrics all agree.

A boot ends at `booted` or `failed`. After that, DHCP events alone (an OS
renewing its lease) stay with the finished boot; a new boot begins when the
server serves a loader or script again, or the node reports, taking any DHCP
events just before it along. A silence longer than `GAP` followed by a DHCP,
loader or script event also starts a new boot (a node that hung and was reset), and so does
a power action through the BMC that powered the node up (on, cycle, reset): the boot it
starts is timed from that moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .store import EventRecord

SERVER_STAGES = ("dhcp-offer", "dhcp-ack", "proxy-offer", "loader", "script", "kernel", "initrd", "rootfs",
                 "seed-served", "seed-skipped")
TERMINAL = frozenset({"booted", "failed"})
DHCP = frozenset({"dhcp-offer", "dhcp-ack", "proxy-offer"})
START = DHCP | {"loader", "script"}
# What the access rule saw happen to a node (access.py): a refused claim of its secrets, a
# contested boot. They are part of the boot they happen in and never start or end one, so
# someone else's requests cannot open a phantom boot in a node's timeline.
# What the TPM rule saw (tpm_gate.py) is a note too.
NOTES = frozenset({"refused", "contested", "tpm-enrolled", "tpm-attested", "tpm-pending", "untrusted-tpm",
                   "untrusted-report", "untrusted-boot",
                   "seed-served", "seed-skipped"})  # the last two: what a seeding node did


# Recorded by the operator's tools, never reported by a node: `power` (an action through the
# BMC; one that powers the node up starts a boot).
OPERATOR_STAGES = ("power",)
POWER_UP = frozenset({"on", "cycle", "reset"})


def powers_up(e: EventRecord) -> bool:
    return e.stage == "power" and e.detail.get("action") in POWER_UP and e.detail.get("result") == "ok"


def is_note(e: EventRecord) -> bool:
    """A note, a power action that did not power the node up, or a DHCP event of a lease under
    a client id of its own (not the machine's)."""
    return (e.stage in NOTES or (e.stage == "power" and not powers_up(e))
            or (e.stage in DHCP and "client_id" in e.detail))
GAP = 600.0


@dataclass
class Boot:
    events: list[EventRecord]

    @property
    def started(self) -> float:
        return self.events[0].at

    @property
    def updated(self) -> float:
        return self.events[-1].at

    @property
    def stage(self) -> str:
        """The terminal stage if the boot reached one, else the latest stage (a note only
        when the boot has nothing else)."""
        for e in reversed(self.events):
            if e.stage in TERMINAL:
                return e.stage
        for e in reversed(self.events):
            if not is_note(e):
                return e.stage
        return self.events[-1].stage

    @property
    def duration(self) -> float | None:
        """Seconds from the first event to `booted`; None until it boots."""
        for e in self.events:
            if e.stage == "booted":
                return e.at - self.started
        return None

    @property
    def download_mbps(self) -> float | None:
        """Root download speed: the node's own figure, else what the server measured."""
        for stage in ("download-done", "rootfs"):
            for e in reversed(self.events):
                if e.stage == stage:
                    mbps = mbps_of(e.detail)
                    if mbps is not None:
                        return mbps
        return None

    @property
    def contested(self) -> bool:
        """A second claim was made on this boot's credential (access.py): two parties held it."""
        return any(e.stage == "contested" for e in self.events)

    @property
    def failure(self) -> str | None:
        for e in reversed(self.events):
            if e.stage == "failed":
                return str(e.detail.get("reason", "")) or "failed"
        return None


def mbps_of(detail: dict[str, Any]) -> float | None:
    """Megabits per second from an event's `bytes` and `seconds`, if both are sane."""
    try:
        nbytes, seconds = float(detail["bytes"]), float(detail["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if nbytes <= 0 or seconds <= 0:
        return None
    return nbytes * 8 / seconds / 1e6


def split_boots(events: Iterable[EventRecord]) -> list[Boot]:
    """Cut a node's events (oldest first) into boots."""
    boots: list[Boot] = []
    cur: list[EventRecord] = []
    held: list[EventRecord] = []  # DHCP events after an end or a gap: renewal or new boot?
    ended = False
    for e in events:
        if not cur:
            cur, ended = [e], e.stage in TERMINAL
            continue
        if is_note(e):
            cur.append(e)
            continue
        gap = e.at - cur[-1].at > GAP
        if ended or gap:
            if e.stage in DHCP:
                held.append(e)
                continue
            if ended or held or e.stage in START or powers_up(e):
                boots.append(Boot(cur))
                cur, held, ended = held + [e], [], e.stage in TERMINAL
                continue
        if powers_up(e):  # the machine was powered up or reset: whatever it was doing ends here
            boots.append(Boot(cur + held))
            cur, held, ended = [e], [], False
            continue
        cur.extend(held)
        held = []
        cur.append(e)
        ended = ended or e.stage in TERMINAL
    if held and not ended:
        boots.append(Boot(cur))
        cur = held
    else:
        cur.extend(held)
    if cur:
        boots.append(Boot(cur))
    return boots


def last_boot(events: Iterable[EventRecord]) -> Boot | None:
    boots = split_boots(events)
    return boots[-1] if boots else None
