# Two commands do all the set-up on a fresh machine:
#   make run    the main job: the REST service on the embedded dataset (prints the URL)
#   make test   the test suite: pytest (with a real uvicorn server and headless Chromium), then the
#               Docker image built and driven over 127.0.0.1 (docker/test_image.sh)
# Each creates .venv (Python 3.11) and installs what it needs into it; `make test` also installs
# Debian's chromium and docker-compose and a Docker engine (../shared/docker/ensure-engine.sh) when
# they are missing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
CHROMIUM ?= /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test test-py docker-test preview train bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip

$(VENV)/.run-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[coco,service]'
	touch $@

# Ultralytics (a peer the benchmarks and their tests compare against) goes in without its
# dependencies: they pull opencv-python, which would replace the cv2 of albumentations'
# opencv-python-headless; its mixing transforms need nothing that is not already installed.
$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[torch,coco,albumentations,service,train,test,bench]'
	$(PIP) install --no-deps ultralytics==8.4.190
	touch $@ $(VENV)/.run-deps

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

run: $(VENV)/.run-deps
	@echo "detmix service on the embedded dataset: http://$(HOST):$(PORT)/ (playground), http://$(HOST):$(PORT)/docs (API)"
	$(PY) -m detmix serve --host $(HOST) --port $(PORT)

preview: $(VENV)/.run-deps
	$(PY) -m detmix preview --recipe deit --num 8 --seed 0 --out out/preview.png

test: test-py docker-test

test-py: export YOLO_CONFIG_DIR := $(abspath $(VENV))/ultralytics-config
test-py: export YOLO_OFFLINE := 1
# A skipped test fails `make test` (tests/conftest.py): everything it needs is installed here.
test-py: export DETMIX_NO_SKIPS := 1
test-py: $(VENV)/.test-deps | $(CHROMIUM)
	$(PY) -m pytest

docker-test:
	docker/test_image.sh

$(VENV)/.train-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[train]'
	touch $@

train: $(VENV)/.train-deps
	$(PY) -m detmix train --config configs/train/synthetic-cpu.yaml --output-dir out/train

# Every benchmark under bench/, then docs/benchmarks.md regenerated from their JSON figures.
bench: export YOLO_CONFIG_DIR := $(abspath $(VENV))/ultralytics-config
bench: export YOLO_OFFLINE := 1
bench: $(VENV)/.test-deps
	$(PY) bench/bench_core.py
	$(PY) bench/bench_batch.py --device cpu
	if $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then $(PY) bench/bench_batch.py --device cuda; fi
	$(PY) bench/bench_per_sample.py
	$(PY) bench/fidelity.py
	$(PY) bench/bench_service.py
	$(PY) bench/training_effect.py
	$(PY) bench/report.py

docs: $(VENV)/.test-deps
	$(PY) docs/make_figures.py
	$(PY) docs/make_albumentations_figure.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
