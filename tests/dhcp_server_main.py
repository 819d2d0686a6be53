"""Runs only the DHCP server, as a subprocess inside a test's network namespace.

Usage: python dhcp_server_main.py CONFIG SERVER_IP. Prints "ready" once the
sockets are bound; SIGTERM stops it cleanly (kill -9 tests durability).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from ramboot.config import load_config
from ramboot.inventory.store import Store
from ramboot.policy import Booter
from ramboot.server.dhcp_server import start_dhcp
from ramboot.server.events import EventLog


async def main(config_path: str, server_ip: str) -> None:
    config = load_config(config_path)
    store = Store.for_config(config)
    booter = Booter(config, store.directory, server_ip)
    events = EventLog(store.events, flush_interval=0.05)
    events.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    srv = await start_dhcp(config, booter, store, events, server_ip)
    print("ready", flush=True)
    await stop.wait()
    await srv.close()
    await events.stop()
    store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
