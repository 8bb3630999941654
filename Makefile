# Custos: `make run` serves the quickstart, `make test` runs every test, `make bench` measures.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The install stamp changes whenever pyproject.toml does, so an edited dependency is installed.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
TEST_STAMP := $(STAMP)-test

.PHONY: run test lint bench install clean browsers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	rm -f $(VENV)/.installed-* && touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	@scripts/quickstart.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check custos tests bench
	$(BIN)/ruff format --check custos tests bench

# The console's browser tests (tests/test_console.py) drive Debian's chromium with its
# chromedriver; installed here when missing (as root, or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browsers:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi

test: $(TEST_STAMP) browsers
	$(BIN)/ruff check custos tests bench
	$(BIN)/ruff format --check custos tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@bench/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache custos.egg-info
