# The commands the README shows; CI (.ci/run) calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test lint bench bench-quick serve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## Set up and run the demo on the embedded store (DuckDB in ~/.percorso).
demo: $(STAMP)
	$(BIN)/percorso demo

serve: $(STAMP)
	$(BIN)/percorso serve

lint: $(STAMP)
	$(BIN)/ruff check percorso tests benchmarks
	$(BIN)/ruff format --check percorso tests benchmarks
	$(BIN)/mypy

## Set up and run the whole test suite (DuckDB and PostgreSQL), with lint and type checks.
test: lint
	$(BIN)/python -m pytest

## Benchmarks (results in benchmarks/results/*.json); see docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick
