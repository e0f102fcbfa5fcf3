# Every target that needs Python sets up .venv first; nothing else is assumed installed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
PROMPT ?= a small blue square to the left of a large red circle

.PHONY: help install demo test unit nbval browser colab-stack gpu-check lab notebooks bench clean

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

test: $(STAMP)  ## unit tests (the browser test too, when Chromium is here), then every notebook under nbval
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || test -n "$$DMI_CHROMIUM" || \
	  echo "note: no Chromium, so tests/test_browser.py is skipped. Get one with: sudo apt-get install -y chromium"
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval notebooks --nbval-sanitize-with notebooks/nbval_sanitize.cfg

unit: $(STAMP)  ## unit tests only
	$(PY) -m pytest tests

nbval: $(STAMP)  ## notebooks only
	$(PY) -m pytest --nbval notebooks --nbval-sanitize-with notebooks/nbval_sanitize.cfg

browser: $(STAMP)  ## the browser test alone: every lesson's widgets, driven in headless Chromium (DMI_BROWSER_FULL=1: every cell)
	$(PY) -m pytest tests/test_browser.py -v

# Colab's notebook stack, simulated: the versions Colab pins for the notebook (ipywidgets 7.7.1 with
# widgetsnbextension 3.6, IPython 7.34, ipykernel 6.17, notebook 6.5, and jupyter-server 2.11 / tornado 6.4
# from google-colab's own requirements), the local CPU torch, and the classic Notebook 6.5 as the frontend
# (Colab renders ipywidgets 7 with its own frontend; the classic Notebook is the nearest open one).
# Python: Colab's runtime is on 3.12, but this machine's Debian (bookworm) offers neither
# python3.12 nor python3.13 (`apt-cache policy python3.12 python3.13`: nothing), and the local CPU
# torch==2.13.0 is a cp311 wheel, so the simulation runs on Debian's python3.11.
COLAB_PYTHON ?= /usr/bin/python3.11
COLAB_VENV   ?= .venv-colab
COLAB_PY     := $(COLAB_VENV)/bin/python
COLAB_STAMP  := $(COLAB_VENV)/.installed
COLAB_OUT    ?= .cache/colab-stack
# widgetsnbextension 3.6.1 is the release that shipped with ipywidgets 7.7.1: with the newest 3.6.x (3.6.10)
# the classic Notebook cannot draw any interact view ("n._deserialize_state is not a function").
COLAB_PINS   := ipywidgets==7.7.1 widgetsnbextension==3.6.1 ipython==7.34.0 ipykernel==6.17.1 notebook==6.5.7 \
                jupyter-server==2.11.2 tornado==6.4.2

$(COLAB_STAMP): pyproject.toml Makefile
	test -x $(COLAB_PY) || { $(COLAB_PYTHON) -m venv $(COLAB_VENV) && echo '*' > $(COLAB_VENV)/.gitignore; }
	$(COLAB_PY) -c "import torch" 2>/dev/null || $(COLAB_PY) -m pip install -q "torch==2.13.0"
	# The package and the test tools in one resolve, so that nothing moves the pins.
	$(COLAB_PY) -m pip install -q -e . $(COLAB_PINS) pytest nbval nbconvert playwright psutil
	$(COLAB_PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(COLAB_PY) -m pip list 2>/dev/null | grep -i -E "^(torch|ipywidgets|widgetsnbextension|ipython|ipykernel|notebook|jupyter.server|jupyter.client|tornado|nbconvert) "
	touch $(COLAB_STAMP)

colab-stack: $(COLAB_STAMP)  ## Colab's pinned notebook stack in .venv-colab: every lesson top to bottom, then the browser test on the classic Notebook
	@status=0; \
	$(COLAB_PY) tools/run_lessons.py $(NOTEBOOKS) --out $(COLAB_OUT) || status=1; \
	DMI_REQUIRE_BROWSER=1 DMI_BROWSER_FRONTEND=classic $(COLAB_PY) -m pytest tests/test_browser.py tests/test_colab_setup.py -v \
	  || status=1; \
	exit $$status

gpu-check: $(STAMP)  ## on a GPU (e.g. Colab's): precision, flex vs dense attention, steps/s per preset, KV cache == recompute
	$(PY) bench/gpu_check.py

lab: $(STAMP)  ## JupyterLab on the course
	$(VENV)/bin/jupyter lab notebooks

notebooks: $(STAMP)  ## re-execute every notebook in place, in order
	for nb in $(NOTEBOOKS); do \
	  $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=1200 --ExecutePreprocessor.kernel_name=python3 "$$nb" || exit 1; \
	done

bench: $(STAMP)  ## run the quick benchmarks in bench/ (bench_time_to_quality.py takes hours: run it on its own)
	for b in bench/bench_*.py; do case "$$b" in *time_to_quality*) continue;; esac; $(PY) "$$b" || exit 1; done

clean:  ## remove the virtual environments and caches
	rm -rf $(VENV) $(COLAB_VENV) .cache .pytest_cache demo_out
