# The two quick-start commands:  `make demo`  and  `make test`.
PYTHON ?= python3
DEMO_OUT ?= demo_output

.PHONY: install demo test bench docs
.install-stamp: pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	@touch .install-stamp

install: .install-stamp

demo: install
	$(PYTHON) -m fewshot_priors.cli demo --output-dir $(DEMO_OUT)

test: install
	$(PYTHON) -m pytest -n 2 --dist loadfile tests

bench: install
	$(PYTHON) -m pytest benchmarks

docs: install
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PYTHON) -m mkdocs build --strict
