# Set-up is implicit: every target below first builds .venv (torch 2.13.0 CPU wheel
# first, so pip never resolves torch to a multi-GB CUDA build, then this package
# editable with its dev extras).
TORCH := 2.13.0

# $(call torch_venv,DIR,VERSION): a fresh venv in DIR holding torch VERSION, installed
# before anything else. pip byte-compiles torch as it installs it, and the last line
# checks that it did: where PYTHONDONTWRITEBYTECODE=1 is set (as on CI), a torch
# installed without its .pyc files (pip's --no-compile) is compiled from source by
# every process that imports it, every rank included, which slowed the suites by a
# third and timed tests out.
define torch_venv
$(PYTHON) -m venv $(1)
$(1)/bin/python -m pip install -q --upgrade pip
$(1)/bin/python -m pip install -q torch==$(2)
$(1)/bin/python -c "import importlib.util as u, os, sys; o = u.find_spec('torch').origin; sys.exit(None if os.path.exists(u.cache_from_source(o)) else f'torch has no bytecode beside {o}: every import would compile it')"
endef
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The floor: the lowest torch pyproject.toml allows, in a venv of its own. PyPI's
# Linux torch 2.6.0 is the CUDA build (about 3 GB with its nvidia-* wheels); it runs
# on CPU too.
FLOOR_TORCH := 2.6.0
FLOOR_VENV := .venv-floor
FLOOR_PY := $(FLOOR_VENV)/bin/python
FLOOR_STAMP := $(FLOOR_VENV)/.installed

.PHONY: examples test test-cold test-floor lint wheel-check runtime-check gpu-check benchmarks benchmarks-warm docs docs-examples clean

$(STAMP): pyproject.toml
	$(call torch_venv,$(VENV),$(TORCH))
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# torch first, as above; the package's own torch>=2.6 is then already met, and the
# check stops a pip that replaced it anyway from testing some other torch.
$(FLOOR_STAMP): pyproject.toml
	$(call torch_venv,$(FLOOR_VENV),$(FLOOR_TORCH))
	$(FLOOR_PY) -m pip install -q -e '.[dev]'
	$(FLOOR_PY) -c "import sys, torch; v = torch.__version__; sys.exit(None if v.split('+')[0] == '$(FLOOR_TORCH)' else f'$(FLOOR_VENV) has torch {v}, not $(FLOOR_TORCH)')"
	touch $(FLOOR_STAMP)

examples: $(STAMP)  ## the main job: the example suite
	$(PY) -m pytest examples

# Four workers on two cores: many tests wait on processes (deadlines, start-up), and
# work stealing keeps the long ones from queueing behind each other.
TEST_ARGS := -n 4 --dist worksteal

test: $(STAMP)  ## the test suite: testpaths (tests/), pytester runs, four xdist workers
	$(PY) -m pytest $(TEST_ARGS)

# Warm rank start is the default; what depends on how a rank starts (starting, hangs
# and faults at start and between tests, restarts, leftovers, the state and threads a
# rank starts with, devices shared out to ranks) and the examples must pass with ranks
# started as fresh interpreters too (the variable reaches every pytest run the suite
# starts). Left out, as make test runs them and their subject is the same however a
# rank started: what happens inside a test body (fail-fast, meshes, parity, seeding,
# the shared tmp path; the examples run those cold), the main process's reports, tests
# where no plugin-started rank runs (usage and collection errors, the fake world,
# launcher sessions, pure logic), and tests that choose the start mode themselves.
COLD_TESTS := $(addprefix tests/distributed/test_,containment.py faults.py hygiene.py \
	leftovers.py pools.py ranks.py traps.py) tests/test_gpu_share.py \
	tests/test_simulated_accelerators.py
COLD_ARGS := -m "not start_mode"

test-cold: $(STAMP)  ## the start-dependent tests and the examples with --composable-start=cold
	PYTEST_COMPOSABLE_START=cold $(PY) -m pytest $(TEST_ARGS) $(COLD_ARGS) $(COLD_TESTS)
	PYTEST_COMPOSABLE_START=cold $(PY) -m pytest -q examples

test-floor: $(FLOOR_STAMP)  ## the test suite on the lowest torch allowed, 2.6.0
	$(FLOOR_PY) -m pytest $(TEST_ARGS) tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

wheel-check: $(STAMP)  ## build the wheel, install it instead of the editable copy, rerun the examples
	rm -rf dist
	$(PY) -m pip wheel -q --no-deps -w dist .
	$(PY) -m pip install -q --force-reinstall --no-deps dist/*.whl
	cd examples && ../$(PY) -c "import pytest_composable, pathlib; assert 'site-packages' in pytest_composable.__file__; assert (pathlib.Path(pytest_composable.__file__).parent / 'py.typed').exists()"
	cd /tmp && $(CURDIR)/$(PY) -m pytest -p no:cacheprovider --rootdir=$(CURDIR)/examples $(CURDIR)/examples -q
	$(PY) -m pip install -q --no-deps -e .

# What users install: torch, pytest and pluggy only (no numpy, no dev extras), with this
# package installed as a wheel would be; the launched (torchrun, srun, mpirun) paths run there.
RUNTIME := .venv-runtime
$(RUNTIME)/.installed: pyproject.toml
	$(call torch_venv,$(RUNTIME),$(TORCH))
	$(RUNTIME)/bin/python -m pip install -q .
	touch $@

runtime-check: $(RUNTIME)/.installed  ## torchrun, srun and mpirun sessions without numpy
	$(RUNTIME)/bin/python -m pip install -q --force-reinstall --no-deps .
	! $(RUNTIME)/bin/python -c "import numpy" 2>/dev/null
	cd examples && OMP_NUM_THREADS=1 ../$(RUNTIME)/bin/python -m torch.distributed.run --standalone --nproc-per-node=2 -m pytest -p no:cacheprovider -q -rs .
	$(RUNTIME)/bin/python -m pytest -p no:cacheprovider -q -rs tests/distributed/test_launchers.py tests/distributed/test_torchrun.py tests/distributed/test_launched_faults.py

gpu-check:  ## on a CUDA machine: its python3 and this checkout, nothing installed
	PYTHON=$(PYTHON) .ci/gpu-check

benchmarks: $(STAMP)  ## every benchmark, bench_warm.py included (exit 1 on a missed target)
	$(PY) benchmarks/run_all.py

benchmarks-warm: $(STAMP)  ## warm rank start only: benchmarks/bench_warm.py (about 6 minutes)
	$(PY) benchmarks/bench_warm.py --pss

# The documentation site (docs/): Sphinx with MyST Markdown pages, built from a fresh
# .venv with the docs extra on top of the dev one. Warnings are errors, cross-references
# are checked (nitpicky), and the reference pages are generated from the plugin's own
# option definitions, fixtures, marker and docstrings (docs/_ext). The lifecycle
# diagram is Graphviz source (docs/explanation/*.dot): `dot` must be installed
# (Debian: apt-get install graphviz; .ci/run installs it).
DOCS_STAMP := $(VENV)/.docs-installed
DOCS_OUT := docs/_build/html

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)  ## build the site into docs/_build/html, warnings as errors
	@command -v dot >/dev/null || { echo "make docs: Graphviz's dot is missing (apt-get install graphviz)"; exit 1; }
	$(PY) -m sphinx -b html -E -W --keep-going -n -q docs $(DOCS_OUT)

# The hooks example is a session of its own: its devices hook must be loaded at start-up.
docs-examples: $(STAMP)  ## run every code example the docs include (docs/examples/)
	$(PY) -m pytest -p no:cacheprovider -q docs/examples --ignore=docs/examples/hooks
	$(PY) -m pytest -p no:cacheprovider -q docs/examples/hooks

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(RUNTIME) dist build *.egg-info docs/_build
