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
# The mypyc-compiled modules (src/ramboot/compiled.py) once more from their .py source: their unit
# and hypothesis tests (the main run above asserts it loaded the compiled ones: tests/test_compiled.py).
PURE_TESTS=(tests/test_compiled.py tests/test_dhcp_properties.py tests/test_rfc2131_dhcp.py tests/test_rfc2132_options.py
  tests/test_rfc3396_long_options.py tests/test_rfc4578_pxe.py tests/test_per_packet_paths.py tests/test_rfc1350_tftp.py
  tests/test_rfc2347_options.py tests/test_rfc7440_windowsize.py tests/test_tftp_properties.py tests/test_tftp_memory.py
  tests/test_rfc4578_boot_decision.py tests/test_secure_boot_policy.py tests/test_rfc8415_dhcp6.py tests/test_rfc5970_boot6.py)
echo "test: the compiled modules' tests against their pure-Python source (RAMBOOT_PURE_PYTHON=1)"
RAMBOOT_PURE_PYTHON=1 .venv/bin/python -m pytest -q -p no:cacheprovider "${PURE_TESTS[@]}" || rc=1
exit "$rc"
