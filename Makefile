# Two commands do everything: `make train` and `make test` (each sets up what it needs first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=
NPROC ?= 2

.PHONY: setup data train train-ddp tune dashboard test test-fast test-random lint format tensorboard bench app clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,export,app,tune]"
	touch $@

# Prepared data, a directory with the .gz files, or torchvision's download; apt-get only when none works.
data: setup
	@$(PY) -m fmnist.data; rc=$$?; \
	if [ $$rc -eq 3 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "No source had Fashion-MNIST: installing the Debian package dataset-fashion-mnist"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist \
			&& $(PY) -m fmnist.data; \
	else exit $$rc; fi

train: data
	$(PY) scripts/train.py $(ARGS)

# Everything (what CI runs): the notebooks run from a fresh kernel included (--nbmake), with
# branch coverage of fmnist/ (its floor: pyproject.toml), one pytest-xdist worker per core, each
# test module kept on one worker (its module fixtures made once). test-fast skips the notebooks
# and the tests marked slow: feedback in under a minute.
PARALLEL := -n auto --dist loadscope
NOTEBOOKS := --nbmake --nbmake-timeout=120  # a notebook cell running longer than 2 minutes fails
test: data
	$(PY) -m pytest $(PARALLEL) $(NOTEBOOKS) --cov $(ARGS)

test-fast: data
	$(PY) -m pytest -m "not slow" $(ARGS)

# The whole suite in three random orders (pytest-randomly): no test may depend on another's
# leftovers. Each run prints its seed; ARGS="-p randomly --randomly-seed=N" replays one.
test-random: data
	for run in 1 2 3; do $(PY) -m pytest $(PARALLEL) $(NOTEBOOKS) -p randomly $(ARGS) || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) .ci/house.py

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Several processes (gloo on CPU, nccl on GPUs): make train-ddp NPROC=2 ARGS="trainer.max_epochs=3"
train-ddp: data
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) scripts/train.py $(ARGS)

# A search with Optuna (docs/search.md): make tune ARGS="hparams_search=fast search.n_trials=60"
tune: data
	$(PY) scripts/tune.py $(or $(ARGS),hparams_search=fast)

# Optuna's dashboard of a search's study on http://127.0.0.1:8080 (STUDY=smoke, or STORAGE=url)
STUDY ?= fast
STORAGE ?= sqlite:///outputs/search/$(STUDY)/study.db
dashboard: setup
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port 8080 $(STORAGE)

bench: data
	$(PY) scripts/benchmark.py $(ARGS)

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir outputs

# The lesson as a web page on http://127.0.0.1:7860: make app ARGS="ckpt_path=outputs/runs/<time>"
app: setup
	$(PY) scripts/app.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .coverage build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
