# Benchmarks (see bench/README.md), included from the main Makefile. `make bench` runs every
# benchmark one after the other (never in parallel: they time wall clock on a shared machine).
BENCH_PYTHON        ?= .venv/bin/python
BENCH_DEPS          ?= install
BENCH_DBT_ARGS      ?=
BENCH_MANIFEST_ARGS ?=
BENCH_EMBEDDED_ARGS ?=
BENCH_MICROBATCH_ARGS ?=
BENCH_REUSE_ARGS    ?=
# The other benchmarks of bench/ (backfill, bulk load, microbatch), run with their defaults when present.
BENCH_OTHERS        := $(wildcard bench/bench_backfill.py bench/bench_load.py bench/bench_microbatch.py bench/bench_reuse.py)

.PHONY: bench bench-dbt bench-manifest bench-embedded bench-microbatch bench-reuse bench-others

bench: $(BENCH_DEPS)
	$(BENCH_PYTHON) bench/bench_dbt.py $(BENCH_DBT_ARGS)
	$(BENCH_PYTHON) bench/bench_manifest.py $(BENCH_MANIFEST_ARGS)
	$(BENCH_PYTHON) bench/bench_embedded.py $(BENCH_EMBEDDED_ARGS)
	@for script in $(BENCH_OTHERS); do echo "== $$script"; $(BENCH_PYTHON) $$script || exit 1; done

## dbt build vs mage-dbt run vs per-model dbt run (issue 3), N = 50 and 200, DuckDB and Postgres.
bench-dbt: $(BENCH_DEPS)
	$(BENCH_PYTHON) bench/bench_dbt.py $(BENCH_DBT_ARGS)

## Time and peak memory to load a 2,000-model manifest into blocks, cold and cached (issue 3).
bench-manifest: $(BENCH_DEPS)
	$(BENCH_PYTHON) bench/bench_manifest.py $(BENCH_MANIFEST_ARGS)

## Repeat `mage-dbt run demo` on the embedded default (local Prefect server) vs plain dbt build (issue 13).
bench-embedded: $(BENCH_DEPS)
	$(BENCH_PYTHON) bench/bench_embedded.py $(BENCH_EMBEDDED_ARGS)

## 30-day backfill of 6 microbatch models on Postgres: dbt --event-time-start/end vs mage-dbt backfill vs --vars loop (issue 15).
bench-microbatch: $(BENCH_DEPS)
	$(BENCH_PYTHON) bench/bench_microbatch.py $(BENCH_MICROBATCH_ARGS)

## Unchanged second run with --reuse vs plain dbt build, N = 200 on Postgres; one changed model (issue 17).
bench-reuse: $(BENCH_DEPS)
	$(BENCH_PYTHON) bench/bench_reuse.py $(BENCH_REUSE_ARGS)

bench-others: $(BENCH_DEPS)
	@for script in $(BENCH_OTHERS); do echo "== $$script"; $(BENCH_PYTHON) $$script || exit 1; done
