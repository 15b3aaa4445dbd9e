# The README's two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxem demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=30

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_gmm.py
