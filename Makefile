# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install demo test services bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/python -m uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## Run the demo pipeline end to end on DuckDB with an embedded Prefect server.
demo: install
	$(BIN)/mage-dbt run demo --execution-date 2024-02-01
	@echo "mage-dbt is in $(BIN): run  source $(BIN)/activate  (or export PATH=\"$$PWD/$(BIN):\$$PATH\") to use it directly"

## Start/await the services tests use (PostgreSQL, Chromium for UI checks), then run every test.
services:
	@bash scripts/ensure_services.sh

test: install services
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider --durations=40 tests

-include bench/bench.mk

clean:
	rm -rf .mage_dbt .pytest_prefect dbt_projects/*/target dbt_projects/*/logs
