.PHONY: setup test demo bench fuzz soak clean deb

setup:
	@bash scripts/setup.sh

# The whole suite, VM boots included. pytest's exit code 5 (no tests ran) is a failure.
test: setup
	@bash scripts/test.sh

demo: setup
	@bash scripts/demo.sh

bench: setup
	@bash scripts/bench.sh

# Coverage-guided fuzzing (atheris), a million inputs per target; not part of `make test`.
fuzz: setup
	@bash scripts/fuzz.sh

# dist/ramboot_VERSION_amd64.deb for Debian 12 (reproducible; RAMBOOT_VERSION overrides pyproject's version).
deb: setup
	@bash scripts/deb.sh

clean:
	rm -rf .venv build dist *.egg-info test-artifacts

# Mixed load against one `ramboot serve` for SOAK_MINUTES (default 30); not part of `make test`.
soak: setup
	@bash scripts/soak.sh
