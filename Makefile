# Two commands do all the set-up on a fresh machine:
#   make run    the main job: a preview of mixed samples from the embedded dataset
#   make test   the test suite
# Each creates .venv (Python 3.11) and installs what it needs into it.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test preview venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip

$(VENV)/.run-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[coco]'
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[torch,coco,albumentations,test]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(PY) -m detmix preview --recipe deit --num 8 --seed 0 --out out/preview.png

test: $(VENV)/.test-deps
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
