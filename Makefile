# Every target that needs Python sets up .venv first; nothing else is assumed installed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
PROMPT ?= a large red circle in the top left

.PHONY: help install demo test unit nbval lab notebooks bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, when no torch is present (a bare `torch` would pull a CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its dev tools

demo: $(STAMP)  ## tokenize, render and grade a prompt with the shipped models
	$(VENV)/bin/dalle-mini-impl demo "$(PROMPT)" --out demo_out

test: $(STAMP)  ## unit tests, then every notebook under nbval
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval notebooks --nbval-sanitize-with notebooks/nbval_sanitize.cfg

unit: $(STAMP)  ## unit tests only
	$(PY) -m pytest tests

nbval: $(STAMP)  ## notebooks only
	$(PY) -m pytest --nbval notebooks --nbval-sanitize-with notebooks/nbval_sanitize.cfg

lab: $(STAMP)  ## JupyterLab on the course
	$(VENV)/bin/jupyter lab notebooks

notebooks: $(STAMP)  ## re-execute every notebook in place, in order
	for nb in $(NOTEBOOKS); do \
	  $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=1200 --ExecutePreprocessor.kernel_name=python3 "$$nb" || exit 1; \
	done

bench: $(STAMP)  ## run every benchmark in bench/
	for b in bench/bench_*.py; do $(PY) "$$b" || exit 1; done

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .cache .pytest_cache demo_out
