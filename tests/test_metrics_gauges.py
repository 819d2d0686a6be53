"""The gauges `make soak` reads: asyncio tasks, Python blocks, SQLite memory, read at each scrape."""

from __future__ import annotations

import asyncio
import re
import sqlite3

from prometheus_client import generate_latest

from ramboot import metrics


def _sample(name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", generate_latest().decode(), re.M)
    assert m, f"{name} not in /metrics"
    return float(m[1])


def test_task_gauge_counts_the_loops_tasks_at_each_scrape() -> None:
    async def main() -> tuple[float, float, float]:
        metrics.watch_tasks(asyncio.get_running_loop())
        before = _sample("ramboot_asyncio_tasks")
        stop = asyncio.Event()
        tasks = [asyncio.create_task(stop.wait()) for _ in range(7)]
        during = _sample("ramboot_asyncio_tasks")
        stop.set()
        await asyncio.gather(*tasks)
        return before, during, _sample("ramboot_asyncio_tasks")

    before, during, after = asyncio.run(main())
    assert before == 1 and during == 8 and after == 1  # main() itself, then +7, then back


def test_memory_gauges_follow_python_and_sqlite() -> None:
    async def main() -> None:
        metrics.watch_tasks(asyncio.get_running_loop())

    asyncio.run(main())
    blocks0, sql0 = _sample("ramboot_python_allocated_blocks"), _sample("ramboot_sqlite_memory_bytes")
    keep = [object() for _ in range(50_000)]
    db = sqlite3.connect(":memory:")
    db.execute("create table t (x)")
    db.executemany("insert into t values (?)", ((b"x" * 200,) for _ in range(20_000)))
    assert _sample("ramboot_python_allocated_blocks") >= blocks0 + 50_000
    assert _sample("ramboot_sqlite_memory_bytes") > sql0 + 2_000_000  # the table's pages
    db.close()
    del keep
