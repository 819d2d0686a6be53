"""The suite's rules (tests/suite_rules.py, docs/testing.md) hold: each case runs a small inner pytest."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
import suite_rules

def pytest_configure(config):
    suite_rules.register(config)
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makeconftest(CONFTEST)

    def run(ci: bool, **files: str) -> pytest.RunResult:
        if ci:
            monkeypatch.setenv("CI", "true")
        else:
            monkeypatch.delenv("CI", raising=False)
        pytester.makepyfile(**files)
        return pytester.runpytest_inprocess("-p", "no:xdist", "-p", "no:cacheprovider", "-rfEs")

    return run


PASSING = "def test_ok():\n    assert True\n"


def test_a_skip_in_ci_fails_the_run(inner) -> None:
    r = inner(True, test_a=PASSING + "import pytest\n\ndef test_s():\n    pytest.skip('no frobnicator here')\n")
    r.assert_outcomes(passed=1, failed=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["FAILED test_a.py::test_s - skipped in CI, which must run everything: no frobnicator here"])


def test_a_skipif_mark_in_ci_fails_the_run(inner) -> None:
    r = inner(True, test_a="import pytest\npytestmark = pytest.mark.skipif(True, reason='needs a unicorn')\n" + PASSING)
    r.assert_outcomes(errors=1)  # the mark is evaluated at setup: an error there
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["ERROR test_a.py::test_ok - skipped in CI, which must run everything: needs a unicorn"])


def test_outside_ci_a_skip_is_only_a_skip(inner) -> None:
    r = inner(False, test_a=PASSING + "import pytest\n\ndef test_s():\n    pytest.skip('no frobnicator here')\n")
    r.assert_outcomes(passed=1, skipped=1)
    assert r.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("module_skip", [
    "pytest.importorskip('rbi_no_such_module')",
    "pytest.skip('collection-time skip', allow_module_level=True)",
])
def test_a_collection_time_skip_in_ci_fails_the_run(inner, module_skip: str) -> None:
    r = inner(True, test_ok=PASSING, test_gone=f"import pytest\n{module_skip}\n" + PASSING)
    r.assert_outcomes(passed=1, skipped=1)  # the other module still runs...
    assert r.ret == pytest.ExitCode.TESTS_FAILED  # ...but the run fails
    r.stdout.fnmatch_lines(["*skipped at collection in CI*", "SKIPPED AT COLLECTION test_gone.py: *"])
    assert ("rbi_no_such_module" if "importorskip" in module_skip else "collection-time skip") in r.stdout.str()


def test_a_collection_time_skip_of_everything_in_ci_fails(inner) -> None:
    r = inner(True, test_gone="import pytest\npytest.importorskip('rbi_no_such_module')\n" + PASSING)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["SKIPPED AT COLLECTION test_gone.py: *rbi_no_such_module*"])


def test_outside_ci_a_collection_time_skip_passes(inner) -> None:
    r = inner(False, test_ok=PASSING, test_gone="import pytest\npytest.importorskip('rbi_no_such_module')\n" + PASSING)
    r.assert_outcomes(passed=1, skipped=1)
    assert r.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
@pytest.mark.parametrize("mark,why", [
    ("@pytest.mark.xfail(reason='flaky, someday', strict=True)", "links no issue"),
    ("@pytest.mark.xfail(strict=True)", "links no issue"),
    ("@pytest.mark.xfail(reason='see issue #13')", "not strict"),
])
def test_an_xfail_without_a_linked_reason_fails(inner, ci: bool, mark: str, why: str) -> None:
    r = inner(ci, test_x=f"import pytest\n\n{mark}\ndef test_bug():\n    assert False\n")
    r.assert_outcomes(errors=1)  # failed at setup: the test body never ran
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines([f"*xfail without a linked reason*{why}*"])


def test_an_imperative_xfail_without_a_link_fails(inner) -> None:
    r = inner(False, test_x="import pytest\n\ndef test_bug():\n    pytest.xfail('broken somehow')\n")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*xfail without a linked reason*'broken somehow' links no issue*"])


@pytest.mark.parametrize("reason", ["issue #13: the relay path answers the client", "https://example.org/bug/7"])
def test_a_linked_strict_xfail_is_allowed_and_stays_strict(inner, reason: str) -> None:
    body = f"import pytest\n\n@pytest.mark.xfail(reason={reason!r}, strict=True)\ndef test_bug():\n    assert False\n"
    r = inner(True, test_x=body)
    r.assert_outcomes(xfailed=1)
    assert r.ret == pytest.ExitCode.OK
    fixed = body.replace("assert False", "assert True")  # once fixed, strict turns the pass into a failure
    r = inner(True, test_x=fixed)
    r.assert_outcomes(failed=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED


def test_a_run_that_collects_nothing_fails(tmp_path) -> None:
    """`make test`'s script turns pytest's exit 5 (no tests collected) into a failure."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "test.sh"
    (tmp_path / "empty").mkdir()
    r = subprocess.run(["bash", str(script), "-p", "no:cacheprovider", str(tmp_path / "empty")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stdout[-1000:], r.stderr[-1000:])
    assert "collected no tests; failing" in r.stderr
