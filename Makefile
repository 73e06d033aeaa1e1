# The commands the README shows; CI (.ci/run) calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test test-stress lint bench bench-quick bench-automation serve screenshots chromium browser-libs

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
	$(BIN)/ruff check percorso tests benchmarks scripts
	$(BIN)/ruff format --check percorso tests benchmarks scripts
	$(BIN)/mypy

## Set up and run the whole test suite (DuckDB and PostgreSQL, and the browser tests), with lint and type checks.
test: lint chromium browser-libs
	$(BIN)/python -m pytest

## The whole suite with two CPU-bound processes beside it (not in CI): no test may lean on an idle machine.
test-stress: lint chromium browser-libs
	$(BIN)/python scripts/burn.py 2 -- $(BIN)/python -m pytest

## Debian's Chromium for the browser tests (Playwright drives it; no browser download).
chromium:
	@command -v chromium >/dev/null || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		echo "installing Debian's chromium for the browser tests"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }

## The browser libraries the tests drive in Chromium (analytics.js), from the npm registry.
browser-libs: tests/browser/node_modules/.installed

tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

## Benchmarks (results in benchmarks/results/*.json); see docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

## The automation engine: event-to-email latency, enrollments/s, 1,000,000 timers (≈ 12 minutes).
bench-automation: $(STAMP)
	$(BIN)/python -m benchmarks --only automation

## Screenshots of the dashboard's main pages into docs/screenshots/ (needs Debian's chromium).
screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py
