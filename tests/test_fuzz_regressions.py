"""Every fuzz target (fuzz/targets.py) on its seeds and on every input that ever found a bug.

`make fuzz` runs the same targets coverage-guided for a million inputs each;
a crash it finds is fixed and its input kept in tests/fuzz_regressions/TARGET/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))

from seeds import seeds  # noqa: E402
from targets import TARGETS  # noqa: E402

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"


def _cases() -> list[tuple[str, str, bytes]]:
    out = []
    for name in TARGETS:
        out += [(name, f"seed-{i}", s) for i, s in enumerate(seeds(name))]
        out += [(name, p.name, p.read_bytes()) for p in sorted((REGRESSIONS / name).glob("*"))]
    return out


@pytest.mark.parametrize("target, case, data", _cases(), ids=[f"{t}-{c}" for t, c, _ in _cases()])
def test_fuzz_case(target: str, case: str, data: bytes) -> None:
    TARGETS[target](data)


def test_every_target_has_seeds() -> None:
    assert all(seeds(name) for name in TARGETS)
