# Every target that needs Python sets up .venv first; nothing else is assumed installed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
PROMPT ?= a small blue square to the left of a large red circle

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

demo: $(STAMP)  ## draw PROMPT with the shipped models: 16 samples, the CLIP best 4, graded
	$(VENV)/bin/dalle-mini-impl generate "$(PROMPT)" --candidates 16 --keep 4 --seed 0 --out demo_out --overwrite
	@echo "images, best first: demo_out/00_*_[0-3].png | contact sheet: demo_out/00_*_sheet.png | demo_out/results.json"

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

bench: $(STAMP)  ## run the quick benchmarks in bench/ (bench_time_to_quality.py takes hours: run it on its own)
	for b in bench/bench_*.py; do case "$$b" in *time_to_quality*) continue;; esac; $(PY) "$$b" || exit 1; done

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .cache .pytest_cache demo_out
