# Developer entry points. `make test` is the README's test command and what CI runs; `make check`
# is the fast loop (everything but the tests marked `slow`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help deps venv lock demo test check lint typecheck imports pytest kafka-up kafka-down clean
.PHONY: image

# The image's name, here and as docker-compose.yml's default (GHL_CONSUMER_IMAGE), the Helm
# chart's image.repository; its tag defaults to pyproject.toml's version.
IMAGE ?= ghcr.io/ghl-consumer/ghl-consumer
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)

help:
	@echo "make demo        local Kafka + the sandbox HighLevel + sample events, end to end"
	@echo "make test        lint, type-check, import contracts, the whole test suite (starts its own Kafka)"
	@echo "make check       the same minus the tests marked slow: the loop to run all day"
	@echo "make kafka-up    start (or reuse) a local Kafka on 127.0.0.1:\$${KAFKA_PORT:-9092}"
	@echo "make kafka-down  stop it"
	@echo "make lock        regenerate requirements*.lock (hashes) from pyproject.toml; UPGRADE=1: newest"
	@echo "make image       build $(IMAGE):$(IMAGE_TAG) (IMAGE=, IMAGE_TAG=; needs Docker)"
	@echo "make fidelity    the real-world corpus through the mapper: BENCHMARKS.md's fidelity section"

# System packages (Java, Maven, redis-server) when missing; see tools/system-deps.sh.
deps:
	@tools/system-deps.sh

# The dependencies exactly as locked, each checked against its hashes; then the package alone.
# `pip check` fails when pyproject.toml asks for something the lock does not hold: `make lock`.
$(BIN)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

# Regenerate requirements.lock (the image's) and requirements-dev.lock (CI's) from
# pyproject.toml, for every platform and Python >= 3.11, keeping the pinned versions that still
# fit; UPGRADE=1 moves every pin to the newest release.
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -q
lock: venv
	$(LOCK) -o requirements.lock
	$(LOCK) --extra dev -o requirements-dev.lock

demo: venv
	@tools/system-deps.sh kafka
	$(BIN)/ghl-consumer demo

lint: venv
	$(BIN)/ruff check consumer tests bench tools

typecheck: venv
	$(BIN)/mypy

# The layer and import contracts of [tool.importlinter] in pyproject.toml.
imports: venv
	$(BIN)/lint-imports

# The whole suite; the 25 slowest tests are listed at the end, so CI shows where the time goes.
pytest: venv deps
	tools/kafka/kafka.sh jars
	$(BIN)/python -m pytest --durations=25

test: lint typecheck imports pytest

# Unit, contract and the fast integration tests: `slow` marks what takes longer than a few
# seconds on 2 cores (subprocess groups, fault injection, browsers, Prometheus).
check: lint typecheck imports venv deps
	tools/kafka/kafka.sh jars
	$(BIN)/python -m pytest -q -m "not slow"

kafka-up:
	@tools/kafka/kafka.sh up

# Works with BuildKit and with the legacy builder; the context is the repository root, filtered
# by .dockerignore.
image:
	docker build -f deploy/Dockerfile -t $(IMAGE):$(IMAGE_TAG) .

kafka-down:
	@tools/kafka/kafka.sh down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench bench-quick
# Benchmarks: every scenario with its baselines on a real broker and the sandbox, then
# BENCHMARKS.md and bench/plots/ regenerated from bench/results/*.json (about 20 minutes).
bench: venv deps
	tools/kafka/kafka.sh jars
	$(BIN)/python bench/run_all.py

# Small sizes, one repeat, a few minutes: run before and after a hot-path change. Writes
# bench/results/quick/ only (never BENCHMARKS.md); CI does not run it.
bench-quick: venv deps
	tools/kafka/kafka.sh jars
	$(BIN)/python bench/run_all.py --quick

.PHONY: fidelity
# Fidelity (issue 14): the real-world corpus through the mapper, one fresh mapper per event, with
# no default phone region and with US; writes bench/results/fidelity.json and regenerates
# BENCHMARKS.md (seconds). The corpus is read from ../shared/corpus/realworld beside the
# repository, never copied into it: CORPUS=DIR reads another. Also part of `make bench`.
fidelity: venv
	$(BIN)/python bench/bench_fidelity.py $(if $(CORPUS),--corpus $(CORPUS))
	$(BIN)/python bench/report.py

.PHONY: soak
# Soak (issue 9): an hour at 100 events/s through 2 consumers, with faults injected on a schedule
# (member SIGKILL / SIGTERM, sandbox 5xx / hangs / resets, Redis and broker restarts), then the
# audit. Writes bench/results/soak.json; exit 1 when an event is unaccounted or the lag never
# drained. CI runs the short version (tests/integration/test_soak.py).
soak: venv deps
	tools/kafka/kafka.sh jars
	$(BIN)/python bench/soak.py --duration 3600 --rate 100
