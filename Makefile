# Everything runs in a project-local virtual environment that `make` creates and fills on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch (a plain `torch` requirement would pull a multi-GB CUDA build)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: a short MB-MPO training run on Pendulum-v1 (local Ray, live progress, plot at the end)
run: $(STAMP)
	$(VENV)/bin/mbmpo-ray train --config pendulum --output runs/pendulum

## The test suite (fast tiers; learning tests marked `slow` are excluded)
test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow -q

lint: $(STAMP)
	$(VENV)/bin/ruff check mbmpo_ray tests benchmarks tune_configs

clean:
	rm -rf $(VENV) runs .pytest_cache
