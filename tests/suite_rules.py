"""The suite's own rules, enforced by pytest hooks (imported by conftest.py; see docs/testing.md).

1. In CI (`CI` set, as `.ci/run` does) nothing may skip: `make setup` installs
   every tool, so a skip only hides a test that did not run.
   - A test skipped at setup or run time (a `skip`/`skipif` mark, `pytest.skip()`
     in a fixture or a test) is reported as a failure.
   - A skip at collection time (`pytest.importorskip` or
     `pytest.skip(allow_module_level=True)` at module level) has no test report
     to turn into a failure: it is recorded, the run exits 1, and the summary
     names each skipped module and why.
2. Always, CI or not: an xfail must link the reason it is expected to fail and
   must be strict, so it fails loudly once the bug is fixed.
   - Its reason holds an issue reference (`#13`, `issue #13`) or a URL.
   - An `xfail` mark has `strict=True` (or the `xfail_strict` ini option is on).
   - An imperative `pytest.xfail("...")` follows the same reason rule.
"""

from __future__ import annotations

import os
import re

import pytest

LINK = re.compile(r"#\d+|https?://\S+")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _skip_reason(longrepr) -> str:
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def xfail_mark_problems(item: pytest.Item) -> list[str]:
    """What is wrong with an item's xfail marks (empty when they follow rule 2)."""
    problems = []
    default_strict = bool(item.config.getini("xfail_strict"))
    for mark in item.iter_markers(name="xfail"):
        reason = str(mark.kwargs.get("reason", ""))
        if not LINK.search(reason):
            problems.append(f"xfail reason {reason!r} links no issue (#NN) or URL")
        if not mark.kwargs.get("strict", default_strict):
            problems.append("xfail is not strict=True: an unexpected pass would go unnoticed")
    return problems


def _fail(rep: pytest.TestReport, message: str) -> None:
    rep.outcome = "failed"
    rep.longrepr = message
    if hasattr(rep, "wasxfail"):
        del rep.wasxfail


class SuiteRules:
    """The hooks; one instance per pytest run (`register(config)`), so nested pytester runs stay apart."""

    def __init__(self) -> None:
        self.collect_skips: list[tuple[str, str]] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        rep: pytest.TestReport = outcome.get_result()
        if rep.when == "setup":
            problems = xfail_mark_problems(item)
            if problems:
                _fail(rep, "xfail without a linked reason (see docs/testing.md): " + "; ".join(problems))
                return
        if hasattr(rep, "wasxfail") and not LINK.search(str(rep.wasxfail)):
            _fail(rep, f"xfail without a linked reason (see docs/testing.md): {rep.wasxfail!r} "
                       "links no issue (#NN) or URL")
            return
        if in_ci() and rep.skipped and not hasattr(rep, "wasxfail"):
            _fail(rep, f"skipped in CI, which must run everything: {_skip_reason(rep.longrepr)}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """Under xdist the controller gets the workers' skipped collect reports here too."""
        if report.skipped:
            self.collect_skips.append((report.nodeid, _skip_reason(report.longrepr)))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if in_ci() and self.collect_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if in_ci() and self.collect_skips:
            terminalreporter.section("skipped at collection in CI (each one fails the run)", red=True, bold=True)
            for nodeid, reason in self.collect_skips:
                terminalreporter.line(f"SKIPPED AT COLLECTION {nodeid or '<session>'}: {reason}", red=True)


def register(config: pytest.Config) -> None:
    """Call from a conftest's pytest_configure."""
    config.pluginmanager.register(SuiteRules(), "ramboot-suite-rules")
