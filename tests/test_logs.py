"""`serve`'s log lines: `[log] format = "text" | "json"`, times with their UTC offset, structured
details as JSON (never Python dict text), and alembic's migration chatter at debug level only.

The real CLI runs in a network namespace of its own (`unshare --net`, loopback only)."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ramboot.logs import JsonFormatter, KeyValueFormatter

RAMBOOT = str(Path(sys.executable).with_name("ramboot"))
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def _serve_log(tmp: Path, fmt: str, *args: str) -> str:
    """Start `ramboot serve` on loopback with a fresh database, stop it with SIGTERM, return its stderr."""
    data = tmp / f"data-{fmt}"
    cfg = tmp / f"{fmt}.toml"
    cfg.write_text(f'data_dir = "{data}"\n[network]\ninterface = "lo"\naddress = "127.0.0.1"\n'
                   '[tftp]\nport = 6969\n[http]\nport = 8080\nbind = "127.0.0.1"\nhttps_port = 0\n'
                   f'[log]\nformat = "{fmt}"\n')
    log = tmp / f"{fmt}.log"
    with open(log, "wb") as err:
        p = subprocess.Popen(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                              RAMBOOT, "serve", "--config", str(cfg), *args], stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while b"serving on" not in log.read_bytes():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return log.read_text()


@pytest.mark.netns
def test_json_format_is_one_object_per_line_with_an_offset_and_migrations_at_debug(tmp_path: Path) -> None:
    text = _serve_log(tmp_path, "json", "-v")
    lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]  # every line parses
    assert any(r["msg"].startswith("serving on") for r in lines), text
    assert all(STAMP.match(r["time"]) and r["level"] in ("debug", "info", "warning") for r in lines), text
    migrations = [r for r in lines if r["logger"].startswith("alembic")]  # a fresh database was migrated
    assert migrations and all(r["level"] == "debug" for r in migrations), migrations
    listening = next(r for r in lines if r["msg"] == "http listening")
    assert listening["port"] == 8080 and listening["host"] == "127.0.0.1", listening  # extras are fields


@pytest.mark.netns
def test_text_format_has_an_offset_and_migrations_only_at_debug(tmp_path: Path) -> None:
    text = _serve_log(tmp_path, "text")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert all(STAMP.match(ln.split(" ", 1)[0]) for ln in lines), text
    assert "alembic" not in text and "serving on" in text, text
    (tmp_path / "v").mkdir()
    verbose = _serve_log(tmp_path / "v", "text", "-v")
    assert re.search(r" debug alembic\.runtime\.migration: Running upgrade", verbose), verbose
    assert " info alembic" not in verbose, verbose
    assert "http listening host=127.0.0.1 port=8080" in verbose, verbose


def _record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("ramboot.events", logging.INFO, __file__, 1, "event", None, None)
    rec.__dict__.update(extra)
    return rec


def test_structured_details_are_json_in_both_formats() -> None:
    rec = _record(mac="52:54:00:12:34:56", stage="dhcp-ack", detail={"ip": "172.22.33.100", "firmware": "bios"},
                  reason="no such image")
    line = KeyValueFormatter().format(rec)
    assert STAMP.match(line.split(" ", 1)[0]), line
    assert ' mac=52:54:00:12:34:56 stage=dhcp-ack detail={"ip":"172.22.33.100","firmware":"bios"}' in line, line
    assert 'reason="no such image"' in line and "{'ip'" not in line, line
    obj = json.loads(JsonFormatter().format(rec))
    assert obj["detail"] == {"ip": "172.22.33.100", "firmware": "bios"} and obj["mac"] == "52:54:00:12:34:56", obj
    assert STAMP.match(obj["time"]) and obj["level"] == "info" and obj["msg"] == "event", obj


def test_a_wrong_log_format_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n[log]\nformat = "xml"\n')
    out = subprocess.run([RAMBOOT, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "log.format: must be one of" in out.stderr and "Traceback" not in out.stderr, out
