# Shortcuts for developers; each target is one command of the README or docs.
PYTHON ?= python

.PHONY: bench bench-data bench-quick test models

bench-data:  ## the benchmark set (needs nilearn), about a minute
	test -f benchmarks/data/manifest.json || $(PYTHON) benchmarks/make_benchmark_set.py

bench: bench-data  ## every method, sweeps and targets: docs/benchmarks.md (about 15 min on a quiet 2-core CPU)
	$(PYTHON) benchmarks/run.py

bench-quick: bench-data  ## defaults only, no target runs (written to out/benchmarks.md)
	$(PYTHON) benchmarks/run.py --quick --no-targets --out out/benchmarks.md

test:
	$(PYTHON) -m pytest -q

models:  ## retrain every shipped model from scratch (resumable; hours on a CPU)
	$(PYTHON) scripts/reproduce_default_models.py
