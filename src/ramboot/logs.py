"""Structured logs: one event per line, fit for journald or a log shipper.

`[log] format = "text"` is `TIME level logger: message key=value ...`; `"json"` is one
JSON object per line with the same fields. Times carry their UTC offset, and a record's
`extra` fields (mac, stage, detail, ...) are appended, so every line about a node carries
its MAC; structured values (a dict, a list) are written as JSON, never as Python text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
FORMATS = ("text", "json")


def _stamp(record: logging.LogRecord) -> str:
    """ISO 8601 with the local UTC offset: a line means one instant wherever it is read."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _text_value(v: object) -> str:
    """Bare when it is one plain word; JSON otherwise (quoted strings, dicts and lists)."""
    if isinstance(v, str) and v and not any(c in v for c in ' "=\\') and v.isprintable():
        return v
    if isinstance(v, (int, float, bool)) or v is None:
        return json.dumps(v)
    return json.dumps(v if isinstance(v, (str, dict, list, tuple)) else str(v), default=str, separators=(",", ":"))


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{_stamp(record)} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={_text_value(v)}" for k, v in _extras(record).items())
        line = f"{base} {extras}" if extras else base
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"time": _stamp(record), "level": record.levelname.lower(),
                                  "logger": record.name, "msg": record.getMessage()}
        for k, v in _extras(record).items():
            out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class _MigrationsAtDebug(logging.Filter):
    """Alembic says what it does at info level at every start; that is debug detail here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("alembic") and record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup_logging(verbose: bool = False, fmt: str = "text") -> None:
    # The formatter prints none of these, and gathering them costs on every record
    # (the logging docs' "Optimization" section): the caller's frame, thread, process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(_MigrationsAtDebug())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
