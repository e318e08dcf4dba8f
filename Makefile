# Everything runs in a project-local virtual environment that `make` creates and fills on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow lint bench clean

# torch: `pip install torch==2.13.0` takes a CPU wheel where pip is offered one locally (e.g.
# PIP_FIND_LINKS, as on this project's machines); otherwise PyPI's Linux x86_64 wheel, which is
# the CUDA build and pulls several GB of nvidia-* packages. MB-MPO needs no GPU: on a CPU-only
# machine without a local wheel, take PyTorch's CPU index with
#     make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test,dev]'
	@$(PY) -c "import torch; print('installed torch', torch.__version__, '(CUDA ' + \
	  torch.version.cuda + ' build)' if torch.version.cuda else '(CPU-only build)')"
	touch $(STAMP)

install: $(STAMP)

## The main job: a short MB-MPO training run on Pendulum-v1 (local Ray, live progress, plot at the end)
## Each run gets its own directory (runs/pendulum-<time>), so no earlier run is overwritten.
run: $(STAMP)
	$(VENV)/bin/mbmpo-ray train --config pendulum --output runs/pendulum-$$(date +%Y%m%d-%H%M%S)

## The test suite (fast tiers; learning tests marked `slow` are excluded)
test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow -q

lint: $(STAMP)
	$(VENV)/bin/ruff check mbmpo_ray tests benchmarks tune_configs

clean:
	rm -rf $(VENV) runs .pytest_cache
