# IDAP++ pipelines: `make help` lists the targets. Everything runs from the project venv in $(VENV).
PYTHON ?= python3
VENV = .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.stamp-install
# About 5 CPU-minutes, 150 s of them process start-up (recipes/demo.yaml says where they go); torch's own thread
# count per step (the machine's cores): 3 min 22 s wall on the idle 2-core VM, 5 min 07 s with --threads 1.
DEMO_CMD ?= $(BIN)/idap pipeline run compress --recipe recipes/demo.yaml --param model_name=resnet_tiny \
	--param train_limit=12000 --param test_limit=2000 --param train_epochs=2
PYTEST = $(BIN)/python -m pytest

# Closed network and a user courtesy: no telemetry from MLflow, Ray or anything honouring DO_NOT_TRACK.
export MLFLOW_DISABLE_TELEMETRY = true
export DO_NOT_TRACK = true
export RAY_USAGE_STATS_ENABLED = 0

.DEFAULT_GOAL := help
.PHONY: help setup data demo test test-fast test-robust lint compile bench-smoke clean distclean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Reinstall only when pyproject.toml changed since the last install (pip, not uv: only pip sees the
# local torch wheel mirrors).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(STAMP) ## Create .venv and install the project with its dev tools (once per pyproject.toml change)

data: setup ## Fetch Fashion-MNIST (Debian package, or ./data, or a download)
	@# The setup installs system packages, never the library: as root, Debian's dataset-fashion-mnist.
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist; } \
		|| echo "could not install dataset-fashion-mnist; idap falls back to ./data or a download"; fi
	@# one line, not the dataset's JSON description (make demo's console stays short; `idap data fetch` prints it)
	@$(BIN)/idap data fetch fashion-mnist >/dev/null && echo "data: fashion-mnist ready"

demo: setup data ## Run the compression pipeline locally on Fashion-MNIST
	$(DEMO_CMD)

test: setup data ## Run the whole test suite, slow and integration tests included
	$(PYTEST) --durations=10

test-fast: setup ## Run the unit tests only (not slow, not integration)
	$(PYTEST) -m "not slow and not integration"

# The outcome tests (tests/README.md) under other float paths: thread counts, seeds, oneDNN off. Each run
# prints its "outcome margins"; the target fails if any run fails.
ROBUST_RUNS = "IDAP_TEST_THREADS=2" "IDAP_TEST_SEED=1" "IDAP_TEST_MKLDNN=0 IDAP_TEST_THREADS=1" \
	"IDAP_TEST_SEED=2 IDAP_TEST_THREADS=2"

test-robust: setup ## Rerun the outcome-dependent tests under 4 perturbations (threads, seed, oneDNN off)
	@failed=0; for vars in $(ROBUST_RUNS); do echo "== test-robust: $$vars"; \
		env $$vars $(PYTEST) -m outcome -p no:cacheprovider || failed=1; done; \
	test $$failed = 0 || { echo "test-robust: a perturbed run failed (above)"; exit 1; }

lint: setup ## Lint with ruff
	$(BIN)/ruff check .

compile: setup ## Compile every Kubeflow pipeline to build/pipelines
	$(BIN)/idap pipeline compile --out build/pipelines

bench-smoke: setup ## Smoke-run the peer comparison benchmark
	$(BIN)/python -m benchmarks.compare --preset fashion-resnet20 --smoke

clean: ## Remove build outputs, caches and local run outputs (keeps .venv and data)
	rm -rf build dist runs mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache benchmarks/work
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## Also remove .venv and data
	rm -rf $(VENV) data
