# One-command workflows. `make demo`: fresh machine -> venv -> Fashion-MNIST -> train BalPoE -> 11-prior table.
# `make test`: fresh machine -> venv -> whole test suite (what CI runs); `make test-fast`: without the slow tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SEED ?= 1

.PHONY: setup test test-fast demo fmnist-data clean

setup: $(STAMP)

# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU build of the pinned torch/torchvision first
TORCH_INDEX ?=

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PY) -m pip install -q --index-url $(TORCH_INDEX) $$(grep -E '^torch(vision)?==' requirements.txt))
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

# Fashion-MNIST offline: the Debian package puts the idx files in /usr/share/datasets/fashion-mnist (read directly).
fmnist-data:
	@if [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -e data/fashion_mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "apt-get failed: train.py will try torchvision's download into data/fashion_mnist"; \
	fi

# the demo evaluates exactly the run it trained (its own folder), never "the newest folder"
DEMO_RUN := saved/fmnist_ir100_balpoe/seed$(SEED)-demo-$(shell date +%Y%m%d-%H%M%S)

demo: setup fmnist-data
	$(PY) train.py -c configs/fmnist_ir100/balpoe.json --seed $(SEED) --run_dir $(DEMO_RUN)
	$(PY) test_all_cifar.py -r $(DEMO_RUN) --posthoc_bias_correction --out results/demo

clean:
	rm -rf $(VENV) .pytest_cache
