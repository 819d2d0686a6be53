"""Conditional and range requests, sans-IO (RFC 9110 §13 and §14).

Given the request's method and headers and the file's ETag and size, say what
to answer: 200, 206 with one range, 304, 412 or 416. The HTTP shell only sends
what this decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class Unsatisfiable(Exception):
    """A well-formed range that starts past the end: 416."""


@dataclass(frozen=True)
class Plan:
    """What to send: `status`, and for 200/206 the body's `start` and `count`."""

    status: int
    start: int = 0
    count: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # added to the file's own (Content-Range)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as (first, last) inclusive; None means serve it all.

    Raises Unsatisfiable for a well-formed range past the end (416). Several
    ranges or a malformed header are ignored, as RFC 9110 §14.2 allows.
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if len(first) > 19 or len(last) > 19:
        return None  # beyond any file size: malformed, not a number to compute with
    if first == "":
        if last == "":
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(int(last) if last else size - 1, size - 1)


def etag_matches(etag: str, header: str, weak: bool) -> bool:
    """RFC 9110 §8.8.3.2: weak comparison for If-None-Match, strong for If-Match/If-Range."""
    header = header.strip()
    if header == "*":
        return True
    for tag in (t.strip() for t in header.split(",")):
        if tag.startswith("W/"):
            if weak and tag[2:] == etag:
                return True
        elif tag == etag:
            return True
    return False


def plan(headers: Mapping[str, str], etag: str, size: int) -> Plan:
    """The answer to a GET or HEAD of a file with this ETag and size."""
    if (im := headers.get("If-Match")) is not None and not etag_matches(etag, im, weak=False):
        return Plan(412)
    if (inm := headers.get("If-None-Match")) is not None and etag_matches(etag, inm, weak=True):
        return Plan(304)
    rng = headers.get("Range")
    if_range = headers.get("If-Range")
    if rng and (if_range is None or etag_matches(etag, if_range, weak=False)):
        try:
            r = parse_range(rng, size)
        except Unsatisfiable:
            return Plan(416, headers={"Content-Range": f"bytes */{size}"})
        if r is not None:
            return Plan(206, r[0], r[1] - r[0] + 1, {"Content-Range": f"bytes {r[0]}-{r[1]}/{size}"})
    return Plan(200, 0, size)
