"""A throwaway HTTP server for the VM boot tests: serves a directory, records POSTs.

Run inside the test's namespace: `python images_httpd.py DIR HOST PORT LOG`.
Each POST body is appended to LOG as one JSON line with its path.
"""

from __future__ import annotations

import json
import sys
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

    def log_message(self, *args) -> None:  # keep the test output for the serial log
        pass


def main() -> None:
    directory, host, port, log = sys.argv[1:5]
    Handler.log_path = log
    ThreadingHTTPServer((host, int(port)), partial(Handler, directory=directory)).serve_forever()


if __name__ == "__main__":
    main()
