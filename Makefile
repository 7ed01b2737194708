# One entry point for setting up and checking the project. `make setup` is idempotent: it
# reinstalls only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow demo bench clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow" -n 2

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/diffinv demo

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/overhead.py

clean-venv:
	rm -rf $(VENV)
