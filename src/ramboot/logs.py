"""Structured logs: one event per line, `key=value` pairs, fit for journald.

A record's `extra` fields (mac, stage, detail, ...) are appended, so every
line about a node carries its MAC.
"""

from __future__ import annotations

import logging
import sys

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _quote(v: object) -> str:
    s = str(v)
    return f'"{s}"' if (" " in s or not s) else s


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = (f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname.lower()} {record.name}:"
                f" {record.getMessage()}")
        extras = " ".join(f"{k}={_quote(v)}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = f"{base} {extras}" if extras else base
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(verbose: bool = False) -> None:
    # The formatter prints none of these, and gathering them costs on every record
    # (the logging docs' "Optimization" section): the caller's frame, thread, process.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
