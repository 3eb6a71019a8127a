# Two commands for a fresh Debian/Ubuntu machine:
#   make demo   installs everything, runs the embedded demo end to end and builds report.html
#   make test   installs everything and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup system demo report test lint clean

system:
	bash envs/install_system_packages.sh $(SYSTEM_FLAGS)

$(BIN)/snakemake: requirements.txt pyproject.toml envs/install_torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	bash envs/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: system $(BIN)/snakemake

demo: setup
	$(BIN)/snakemake --cores $(CORES) train_all
	$(BIN)/snakemake --cores $(CORES) train_all --report report.html
	@echo "Metrics: results/runs/demo/metrics.json  Report: report.html"

test: SYSTEM_FLAGS = --slurm
test: setup
	$(BIN)/snakemake --lint
	$(BIN)/python -m pytest -ra --durations=30 -n 2 --dist loadscope --no-loadscope-reorder tests

lint: setup
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake report.html report.zip
