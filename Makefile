# The README's two commands: `make demo` (the whole DAG on the embedded digits data, CPU, offline) and
# `make test`. Both create or refresh .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Rules call the `qgen` command, so the venv's bin/ goes first on PATH for everything make runs.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv demo test test-slow test-slurm bench latex clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/snakemake --profile profiles/demo
	@echo "Tables: $$(ls paper_tables/*.tex)"

# pdflatex is needed by the test that compiles the rendered tables.
latex:
	@command -v pdflatex >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing pdflatex (texlive-latex-base, texlive-latex-recommended)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      texlive-latex-base texlive-latex-recommended >/dev/null; \
	  else \
	    echo "pdflatex is missing: install TeX Live (e.g. apt-get install texlive-latex-base texlive-latex-recommended)" >&2; \
	    exit 1; \
	  fi; }

test: venv latex
	$(BIN)/python -m pytest
	$(MAKE) test-slurm

# The workflow through a real one-node SLURM on localhost (installed with apt-get when missing): the
# cluster is started, `pytest -m slurm` runs, and the cluster is stopped whatever the outcome. Its daemons
# run as root, so other users get a notice instead (CI runs as root).
test-slurm: venv
	@if [ "$$(id -u)" != 0 ]; then echo "NOT RUN: the SLURM tests start a local cluster, which needs root"; exit 0; fi; \
	  trap 'tests/slurm/stop_cluster.sh' EXIT INT TERM; \
	  tests/slurm/start_cluster.sh && $(BIN)/python -m pytest -m slurm

test-slow: venv latex
	$(BIN)/python -m pytest -m slow

bench: venv
	$(BIN)/python bench/lsq_overhead.py
	$(BIN)/python bench/loop_throughput.py
	$(BIN)/python bench/dag_dryrun.py --profile profiles/slurm
	$(BIN)/python bench/packing.py
	$(BIN)/python bench/flatness_search.py
	$(BIN)/python bench/flatness_search.py --search alpha --width 1 --depth 5 --samples 3 --repeats 1
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/corruptions.py

clean:
	rm -rf results/* paper_tables/* logs .snakemake
	git checkout -- results/.gitkeep paper_tables/.gitkeep
