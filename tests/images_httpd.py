"""A throwaway HTTP server for the VM boot tests: serves a directory, records POSTs.

Run inside the test's namespace: `python images_httpd.py DIR HOST PORT LOG`.
Each POST body is appended to LOG as one JSON line with its path.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    log_path = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"unparsed": body.decode(errors="replace")}
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"path": self.path, "from": self.client_address[0], "body": doc}) + "\n")
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        if self.path.startswith("/stall/"):
            return self._stall()
        return super().do_GET()

    def do_HEAD(self) -> None:
        if self.path.startswith("/stall/"):
            self.path = self.path[len("/stall"):]  # the same headers as the real file
        return super().do_HEAD()

    def _stall(self) -> None:
        """`/stall/REL`: the headers and first 64 KiB of REL, then nothing, until the client gives up.

        When the client closes, one line `{"path": "/stall", "stalled_seconds": S}` goes to LOG:
        S is how long the client waited after the last byte.
        """
        path = self.translate_path("/" + self.path[len("/stall/"):])
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        try:
            self.wfile.write(head)
            self.wfile.flush()
        except OSError:
            return
        t0 = time.monotonic()
        conn = self.connection
        while time.monotonic() - t0 < 300:
            r, _, _ = select.select([conn], [], [], 0.5)
            if r:
                try:
                    if not conn.recv(4096, socket.MSG_DONTWAIT):
                        break  # the client closed
                except BlockingIOError:
                    continue
                except OSError:
                    break
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"path": "/stall", "from": self.client_address[0],
                                "body": {"stalled_seconds": round(time.monotonic() - t0, 2)}}) + "\n")
        self.close_connection = True

    def log_message(self, *args) -> None:  # keep the test output for the serial log
        pass


def main() -> None:
    directory, host, port, log = sys.argv[1:5]
    Handler.log_path = log
    ThreadingHTTPServer((host, int(port)), partial(Handler, directory=directory)).serve_forever()


if __name__ == "__main__":
    main()
