"""The operator's view during a storm: the API and the status page, asked in turn, each on a
new connection (as `ramboot node list --server` or a browser reload would), until SIGTERM.

`python -m bench.storm.apiprobe HOST PORT OUT`: every PERIOD seconds one GET, alternately
`/api/v1/servers` and `/` (the status page); writes {"latencies_ms": [...], "errors": N} to OUT.
An answer that is not 200 within TIMEOUT seconds counts as an error (and TIMEOUT as its time).
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import time
from pathlib import Path

PERIOD = 0.1
TIMEOUT = 10.0
PATHS = ("/api/v1/servers", "/")


def probe(host: str, port: int, out: Path) -> None:
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    lat: list[float] = []
    errors = 0
    i = 0
    while not stop:
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        try:
            conn.request("GET", PATHS[i % len(PATHS)])
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors += 1
            lat.append((time.monotonic() - t0) * 1000)
        except OSError:
            errors += 1
            lat.append(TIMEOUT * 1000)
        finally:
            conn.close()
        i += 1
        time.sleep(max(0.0, PERIOD - (time.monotonic() - t0)))
    out.write_text(json.dumps({"latencies_ms": lat, "errors": errors}))


if __name__ == "__main__":
    probe(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
