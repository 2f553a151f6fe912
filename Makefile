# Two commands a fresh machine needs: `make run` and `make test`.
# Both create .venv when missing and (re)install when pyproject.toml changes.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench soak clean

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
	$(BIN)/ruff check anu_watchd tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy --strict anu_watchd

test: lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .pytest_cache .ruff_cache
