.PHONY: setup test demo bench soak clean

setup:
	@bash scripts/setup.sh

# The whole suite, VM boots included. pytest's exit code 5 (no tests ran) is a failure.
test: setup
	@bash scripts/test.sh

demo: setup
	@bash scripts/demo.sh

bench: setup
	@bash scripts/bench.sh

clean:
	rm -rf .venv build *.egg-info test-artifacts

# Mixed load against one `ramboot serve` for SOAK_MINUTES (default 30); not part of `make test`.
soak: setup
	@bash scripts/soak.sh
