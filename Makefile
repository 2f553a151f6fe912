# Two commands a fresh machine needs: `make run` and `make test`.
# Both create .venv when missing and (re)install when pyproject.toml changes.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench soak clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# The daemon in the foreground on an embedded default under ./var/
# (enabled, activated, log sink, a key generated on first run with mode 0600).
run: $(STAMP)
	$(BIN)/python scripts/devenv.py var
	$(BIN)/anu-watchd --config var/anu-watchd.toml run

lint: $(STAMP)
	$(BIN)/ruff check anu_watchd tests scripts bench examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict anu_watchd

test: lint typecheck
	$(BIN)/python -m pytest -q

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

# Side-by-side benchmarks against the peers (about 25 minutes); writes bench/RESULTS.md.
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py

# A longer reliability campaign than `make test` runs (about 3 minutes more).
soak: $(STAMP)
	ANU_CRASH_RESULTS=10000 ANU_CRASH_KILLS=60 ANU_HOSTILE_EXAMPLES=400 \
		$(BIN)/python -m pytest -q -s tests/reliability
	for i in 1 2 3 4 5; do \
		$(BIN)/python -m pytest -q tests/reliability/test_fsync_failure.py \
			tests/reliability/test_disk_full.py || exit 1; \
	done

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .pytest_cache .ruff_cache
