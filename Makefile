# One obvious way to do each thing: `make setup`, `make test` (`make test-fast` while editing), `make quickstart`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair installed first; override e.g. TORCH_PINS="torch torchvision".
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# Extra arguments of `make bench`, e.g. BENCH_ARGS="--suite scaling" (Swin-B 480 memory and bf16; ~5 min).
BENCH_ARGS ?=

.PHONY: setup test test-fast quickstart lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-demo.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -r requirements-dev.txt -r requirements-demo.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

# The fast tier: no subprocess, no training, no full-checkpoint round trip (tests/conftest.py enforces the first two).
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

quickstart: setup
	$(PY) tools/quickstart.py --out runs/quickstart

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/bench_model.py $(BENCH_ARGS)

clean:
	rm -rf runs/quickstart
