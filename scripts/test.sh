#!/usr/bin/env bash
# Runs the whole suite. Never green without tests: pytest's exit 5 becomes a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
# Types and lint first: zero errors, no blanket ignores (pyproject.toml holds the settings).
.venv/bin/mypy || { echo "test: mypy found errors" >&2; exit 1; }
.venv/bin/ruff check src bench tests fuzz || { echo "test: ruff found errors" >&2; exit 1; }
.venv/bin/python -m pytest -n "${RAMBOOT_TEST_WORKERS:-3}" --dist loadgroup -rfEs "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
