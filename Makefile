# Two commands for a fresh machine: `make study` runs the default study, `make test` the tests.
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: study test test-fast report lint bench clean-smoke

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)

study: $(VENV)/.installed  ## the default study: every CPU-reproducible finding, then the report
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html

test: $(VENV)/.installed  ## everything this machine can run (GPU tests skip with a reason)
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed  ## unit tests only
	$(BIN)/python -m pytest -m "not slow and not slurm"

report: $(VENV)/.installed
	$(BIN)/snakemake --report results/report.html

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/pipeline_scale.py
