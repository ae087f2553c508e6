# ActiveLabel — the README's commands.
#   make install   create .venv and install everything (quick when up to date)
#   make serve     install, generate the sample datastore if absent, start the server
#   make test      install and run the whole test suite
#   make bench     install and run the foundation benchmark and the 10-minute load test (prints figures, writes bench/results/*.json)
#   make bench-al  install and run the active-learning comparison on the hippocampus MRI
#   make lint      ruff check + ruff format --check

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
STUDIES ?= sample-data/studies
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test bench bench-al lint format sample-data clean

install: $(STAMP)

# Re-run only when the pins or the package layout change.  torch goes first, from its
# CPU build on the local disk; everything else is pinned and installed without resolution
# so that nothing can pull a CUDA torch or torchvision back in.
$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, monai, monailabel.app, activelabel; print('installed: torch', torch.__version__, '| monai', monai.__version__)"
	touch $(STAMP)

$(STUDIES)/.generated: | $(STAMP)
	$(VENV)/bin/activelabel data generate --dest $(STUDIES) --count 12 --labeled 3 --modality ct --seed 0
	touch $@

sample-data: $(STUDIES)/.generated

serve: install sample-data
	$(VENV)/bin/activelabel serve --studies $(STUDIES) --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/foundation.py
	$(PY) bench/load.py

# Label efficiency on the MSD hippocampus MRI: every strategy, 3 seeds (hours on 2 CPU cores).
bench-al: install
	$(PY) bench/al_hippocampus.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(STUDIES) build *.egg-info
