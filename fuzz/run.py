"""`make fuzz`: coverage-guided fuzzing of one target with atheris (libFuzzer), seeded from fuzz/seeds.py.

    .venv/bin/python fuzz/run.py TARGET [-runs=1000000] [other libFuzzer flags]

Writes the seed corpus to fuzz/corpus/TARGET/ (kept across runs, not in git) and any
crashing input to fuzz/crashes/TARGET/; a crash found is fixed, then its input is
copied to tests/fuzz_regressions/TARGET/ so `make test` replays it for ever.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

with atheris.instrument_imports(include=["ramboot"]):
    from targets import TARGETS

from seeds import seeds  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz/run.py {{{'|'.join(TARGETS)}}} [libFuzzer flags]")
    name = sys.argv.pop(1)
    corpus = HERE / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    crashes = HERE / "crashes" / name
    crashes.mkdir(parents=True, exist_ok=True)
    target = TARGETS[name]
    atheris.Setup([sys.argv[0], *sys.argv[1:], f"-artifact_prefix={crashes}/", str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
