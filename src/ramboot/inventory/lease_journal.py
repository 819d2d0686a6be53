"""The lease journal of a server alone on its SQLite store: a lease batch is durable once one append returns.

Kea's memfile backend works this way (an append-only lease file, compacted
later). On the DHCP hot path a SQLAlchemy + SQLite transaction costs about
0.1 ms of CPU; one `write()` of a line costs a few microseconds. So the DHCP
server appends each batch of lease changes here and answers at once; the
leases table catches up from memory every `CHECKPOINT_EVERY` seconds in a
worker thread, and before any read of the leases (`Store` does both). A line
survives the process being killed once `write()` returns, which is what the
table gave before (WAL with synchronous=NORMAL: a power loss may drop the last
commits, a kill -9 none), so "no ACK before its lease is durable" still holds.

Only the one server process appends (an exclusive `flock` on the journal): a
second `ramboot serve` on the same store is refused. A process that opens the
store while no server holds the lock replays what a killed server left.

Lines: `{"u": [[ip, key, mac, expires, client_id, hostname, uuid], ...], "d": [ip, ...], "k": {key: ip}}`
(upserts, deletes, and each key that left an address: key -> that address).
The server alone decides every lease, so the journal keeps only each address's
last word; the table takes it as the authority's write (`LeaseRepo.save`
with `moved=None`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .records import LeaseRecord

CHECKPOINT_EVERY = 0.5  # seconds between the table's catch-ups while leases change


class JournalLocked(Exception):
    """Another process appends to this journal (a second server on one SQLite store)."""


def merge(into: dict[str, LeaseRecord | None], upserts: Iterable[LeaseRecord], deletes: Iterable[str],
          ip_of_key: dict[str, str], owners: dict[str, str] | None = None) -> None:
    """Add one result's changes to `into` (address -> its last word, None for deleted), in the
    order of last writes. A key written at a new address has left the one it was written at
    before (the core freed it): that one becomes a delete (conditional on the key, in `owners`)."""
    for ip in deletes:
        into.pop(ip, None)
        into[ip] = None
    for rec in upserts:
        prev = ip_of_key.get(rec.key)
        if prev is not None and prev != rec.ip:
            left = into.get(prev)
            if left is not None and left.key == rec.key:
                del into[prev]
                into[prev] = None
                if owners is not None:
                    owners[prev] = rec.key
        into.pop(rec.ip, None)
        into[rec.ip] = rec
        ip_of_key[rec.key] = rec.ip


class Changes:
    """What the table lacks: each address's last word, and every key written (a key written
    anywhere holds no other address: its older rows go)."""

    def __init__(self) -> None:
        self.by_ip: dict[str, LeaseRecord | None] = {}
        self.keys: set[str] = set()
        self._ip_of_key: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self.by_ip)

    def add(self, upserts: list[LeaseRecord], deletes: list[str], moved: Mapping[str, str]) -> None:
        """One batch; `moved`: key -> the address it left in this batch (that row of it goes first)."""
        for key, left in moved.items():
            rec = self.by_ip.get(left)
            if rec is not None and rec.key == key:
                del self.by_ip[left]
                self.by_ip[left] = None
        merge(self.by_ip, upserts, deletes, self._ip_of_key)
        self.keys.update(r.key for r in upserts)
        self.keys.update(moved)


def _line(upserts: list[LeaseRecord], deletes: list[str], moved: Mapping[str, str]) -> bytes:
    u = [[r.ip, r.key, r.mac, r.expires, r.client_id, r.hostname, r.uuid] for r in upserts]
    return (json.dumps({"u": u, "d": deletes, "k": moved}, separators=(",", ":")) + "\n").encode()


def read(path: Path, into: Changes) -> None:
    """Merge a journal file's complete lines into `into` (a torn last line was never acknowledged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for raw in data.split(b"\n"):
        try:
            msg = json.loads(raw)
            ups = [LeaseRecord(key=u[1], ip=u[0], mac=u[2], expires=float(u[3]), client_id=u[4], hostname=u[5],
                               uuid=u[6]) for u in msg.get("u", ())]
            into.add(ups, [str(ip) for ip in msg.get("d", ())], {str(k): str(v) for k, v in msg.get("k", {}).items()})
        except (ValueError, TypeError, IndexError, AttributeError):
            continue  # the empty tail, or a line cut by a crash mid-write


class LeaseJournal:
    """The append side, held by the one server process; `take()`/`taken()` hand batches to the table."""

    def __init__(self, path: Path, wait_tries: int = 40):
        self.path = path
        self._lock = threading.Lock()  # the loop appends while a worker thread takes
        self._lockfd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        for attempt in range(wait_tries + 1):  # a CLI replaying leftovers holds it for milliseconds
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == wait_tries:
                    os.close(self._lockfd)
                    raise JournalLocked(f"{path}: another ramboot serve uses this SQLite store") from None
                time.sleep(0.05)
        self._seq = max((int(p.suffix[1:]) for p in self._rotated()), default=0)
        self._fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size  # where the next line starts (a torn one is cut back to it)
        self.pending = Changes()
        self._files: list[Path] = []  # rotated files whose changes the table does not hold yet

    def _rotated(self) -> list[Path]:
        out = []
        for p in self.path.parent.glob(self.path.name + ".*"):
            if p.suffix[1:].isdigit():
                out.append(p)
        return sorted(out, key=lambda p: int(p.suffix[1:]))

    def leftover(self) -> Changes:
        """What an earlier process appended and the table may not hold (rotated files, then the journal)."""
        changes = Changes()
        for p in [*self._rotated(), self.path]:
            read(p, changes)
        return changes

    def append(self, upserts: list[LeaseRecord], deletes: list[str], moved: Mapping[str, str]) -> None:
        """Durable once this returns (one write of one line; O_APPEND keeps lines whole).
        `moved`: key -> the address it left (its older rows go, as the core's did)."""
        line = _line(upserts, deletes, moved)
        with self._lock:
            try:
                n = os.write(self._fd, line)
                if n != len(line):
                    raise OSError(errno.ENOSPC, f"{self.path}: short write ({n} of {len(line)} bytes)")
            except OSError:
                # A full disk: no ACK may leave, and no torn line may stay for the next line to join.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            self._size += n
            self.pending.add(upserts, deletes, moved)

    def take(self) -> Changes:
        """The changes since the last take; the file holding them is kept until `taken()`."""
        with self._lock:
            changes, self.pending = self.pending, Changes()
            if changes:
                self._seq += 1
                rotated = self.path.with_name(f"{self.path.name}.{self._seq}")
                os.rename(self.path, rotated)
                os.close(self._fd)
                self._fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
                self._size = 0
                self._files.append(rotated)
        return changes

    def taken(self) -> None:
        """The table holds everything taken so far: its files go."""
        with self._lock:
            files, self._files = self._files, []
        for p in files:
            p.unlink(missing_ok=True)

    def give_back(self) -> None:
        """A failed catch-up: everything not in the table is read back from the files, in order."""
        with self._lock:
            changes = Changes()
            for p in [*self._files, self.path]:
                read(p, changes)
            self.pending = changes

    def forget_leftovers(self) -> None:
        """After the table took `leftover()`: the old files go."""
        for p in self._rotated():
            p.unlink(missing_ok=True)
        os.ftruncate(self._fd, 0)
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._lockfd)
