"""The status page's screenshots in docs/ (the node table with 20 nodes, one node's page).

A real HTTP server on loopback holding the made-up fleet the page's tests use
(tests/status_fleet.py), shown by Debian's headless Chromium through Playwright:

    .venv/bin/python scripts/screenshots.py [OUT_DIR]      # default: docs/
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from httpserver import LiveServer  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from status_fleet import mac_of, populate  # noqa: E402
from test_status_page import ARGS, CHROMIUM, enter_token  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs"
    with tempfile.TemporaryDirectory() as tmp:
        srv = LiveServer(Path(tmp))
        try:
            populate(srv, 20)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(srv.base + "/")
                enter_token(page, srv.token)
                page.wait_for_selector("#nodes tbody tr >> nth=21", timeout=10_000)
                page.wait_for_timeout(1200)  # the rows' change highlight fades
                page.screenshot(path=str(out / "status-nodes.png"), full_page=True)
                page.goto(f"{srv.base}/#/node/{mac_of(3)}")
                page.wait_for_selector("#events", timeout=10_000)
                page.screenshot(path=str(out / "status-node.png"), full_page=True)
                browser.close()
        finally:
            srv.close()
    print(f"wrote {out / 'status-nodes.png'} and {out / 'status-node.png'}")


if __name__ == "__main__":
    main()
