# The two quick-start commands:  `make demo`  and  `make test`.
# Everything runs in a virtual environment: the active one ($VIRTUAL_ENV) if any, else .venv/ in the
# checkout, created by scripts/install.sh from $(PYTHON) (with --system-site-packages, so packages that
# interpreter already has, e.g. torch, are reused instead of reinstalled). A stock system Python that
# refuses `pip install` (PEP 668, "externally-managed-environment") is thus never pip-installed into.
PYTHON ?= python3
VENV ?= $(or $(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_output

.PHONY: install demo test bench docs
$(VENV)/.install-stamp: pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	@touch $@

install: $(VENV)/.install-stamp

demo: install
	$(PY) -m fewshot_priors demo --output-dir $(DEMO_OUT)

test: install
	$(PY) -m pytest -n 2 --dist loadfile tests

bench: install
	$(PY) -m pytest benchmarks

docs: install
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m mkdocs build --strict
