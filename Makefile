# ActiveLabel — the README's commands.
#   make install   create .venv and install everything (quick when up to date)
#   make serve     install, generate the sample datastore if absent, start the server
#   make test      install and run the whole test suite (tests/test_fuzz.py fuzzes a real server for about a minute)
#   make bench     install and run the benchmarks: foundation, 10-minute load test, scale (next sample at 100k,
#                  Ray scoring, cheap uncertainty, task start-up, CT memory, the shipped starting model's Dice on the
#                  sample data), 5 minutes of API fuzzing; each prints figures and writes bench/results/*.json
#   make bench-al  install and run, on the hippocampus MRI, the trainer's learning curve (bench/model_recipe.py)
#                  the active-learning comparison (bench/al_hippocampus.py) and click-based correction
#                  (bench/refine_hippocampus.py); each resumes from its cache
#   make bench-sparse  sparse annotation on the hippocampus: asked-for slices vs whole volumes (bench/sparse_hippocampus.py)
#   make lint      ruff check + ruff format --check
#   make pacs      install Orthanc (apt) if missing, start it on 127.0.0.1:8042 and load the sample DICOM
#   make pacs-stop stop that Orthanc

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
STUDIES ?= sample-data/studies
HOST ?= 127.0.0.1
PORT ?= 8000
PACS_DATA ?= sample-data/pacs
PACS_PORT ?= 8042
DICOM ?= sample-data/dicom
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install serve test bench bench-al bench-sparse lint format sample-data clean pacs pacs-stop orthanc-deps chromium-deps

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

# The PACS tests need Orthanc; without it they fail (loudly), the other tests still run.
test: install
	@$(MAKE) --no-print-directory orthanc-deps || echo "warning: could not install Orthanc: the PACS tests will fail" >&2
	@$(MAKE) --no-print-directory chromium-deps || echo "warning: could not install chromium: the OHIF test will fail" >&2
	$(PY) -m pytest

# Debian's Orthanc and its DICOMweb plugin, installed only when missing.
orthanc-deps:
	@if [ -x /usr/sbin/Orthanc ] && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then :; else \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y orthanc orthanc-dicomweb; \
	fi

# Debian's chromium, for the OHIF viewer test (Playwright drives it; no browser download).
chromium-deps:
	@if [ -x /usr/bin/chromium ]; then :; else \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

$(DICOM)/.generated: $(STUDIES)/.generated
	$(VENV)/bin/activelabel data to-dicom --src $(STUDIES) --dest $(DICOM) --modality ct
	touch $@

# Orthanc on 127.0.0.1:$(PACS_PORT) (DICOMweb at /dicom-web), storage in $(PACS_DATA), sample series loaded.
pacs: install sample-data orthanc-deps $(DICOM)/.generated
	$(VENV)/bin/activelabel pacs start --data $(PACS_DATA) --port $(PACS_PORT)
	$(VENV)/bin/activelabel pacs upload --port $(PACS_PORT) $(DICOM)

pacs-stop:
	$(VENV)/bin/activelabel pacs stop --data $(PACS_DATA)

bench: install
	$(PY) bench/foundation.py
	$(PY) bench/load.py
	$(PY) bench/next_sample_scale.py
	$(PY) bench/ray_scoring.py
	$(PY) bench/cheap_uncertainty.py
	$(PY) bench/task_startup.py
	$(PY) bench/memory_ct.py
	$(PY) bench/starter_models.py
	$(PY) bench/fuzz.py

# Label efficiency on the MSD hippocampus MRI: the trainer's learning curve, then every strategy,
# 3 seeds (hours on 2 CPU cores; DEVICE=cuda runs both on a GPU).
DEVICE ?= cpu
bench-al: install
	$(PY) bench/model_recipe.py --device $(DEVICE)
	$(PY) bench/al_hippocampus.py --device $(DEVICE)
	$(PY) bench/refine_hippocampus.py --device $(DEVICE)

bench-sparse: install
	$(PY) bench/sparse_hippocampus.py --device $(DEVICE)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(STUDIES) $(DICOM) build *.egg-info
