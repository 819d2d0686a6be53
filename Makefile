.PHONY: setup test demo bench fuzz soak clean

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

clean:
	rm -rf .venv build *.egg-info test-artifacts

# Mixed load against one `ramboot serve` for SOAK_MINUTES (default 30); not part of `make test`.
soak: setup
	@bash scripts/soak.sh
