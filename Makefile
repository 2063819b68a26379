# Two commands do everything on a fresh clone: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA ?=
ARTIFACTS ?= artifacts
REPO ?= feature_repo
# make run: the colocated topology, two Ingress replicas with direct ingress (the best on one node:
# docs/architecture.md, Topologies). make run SERVE_CONFIG=cluster/serve_config.yaml THROUGHPUT_OPTIMIZED=0: the graph
# behind the proxy, as `serve deploy cluster/serve_config.yaml` runs it.
# make run NODES=2: a worker node beside the head runs Retriever and Ranker, so the graph (see docs/ops.md,
# Two nodes on one machine).
NODES ?= 1
ifeq ($(NODES),2)
SERVE_CONFIG ?= cluster/serve_config.yaml
THROUGHPUT_OPTIMIZED ?= 0
else
SERVE_CONFIG ?= cluster/serve_config.colocated.yaml
THROUGHPUT_OPTIMIZED ?= 1
endif
# make run BALANCER=off: no HAProxy in front of the direct-ingress ports (cluster/balancer.yaml otherwise)
BALANCER ?= cluster/balancer.yaml
# make run PROMETHEUS=off   (auto: start one when the prometheus binary is installed; see docs/ops.md, Metrics)
PROMETHEUS ?= auto
# make run STORE=redis: the online store is a redis-server started under .run/ (see docs/ops.md, Redis online store)
STORE ?= sqlite
# Ray's token auth, always on: harness/ray_head.py gives each head it starts its own token.
export RAY_AUTH_MODE = token
export RAY_USAGE_STATS_ENABLED ?= 0
export FEAST_DISABLE_USAGE ?= 1

.PHONY: install build retrain run stop test test-fast lint format bench bench-full clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[offline,dev,bench]'
	touch $@

install: $(BIN)/.installed

# make build                 -> synthetic default data (seeded, builds in well under a minute)
# make build DATA=<dir>      -> any MovieLens-format directory (ratings.csv, movies.csv)
build: install
	$(BIN)/recsys build --repo $(REPO) --artifacts $(ARTIFACTS) $(if $(DATA),--data $(DATA))

# make retrain: the serving bundle's recipe on its data plus the events since, then a canary of it
# (CANARY_SHARE of users) when `make run` is up. Cron: see docs/ops.md, "Retrain".
CANARY_SHARE ?= 0.1
retrain: install
	$(BIN)/recsys retrain --repo $(REPO) --artifacts $(ARTIFACTS) $(if $(DATA),--data $(DATA)) \
		--share $(CANARY_SHARE) --quiet

run: install
	@test -e $(ARTIFACTS)/current || $(MAKE) --no-print-directory build
	$(BIN)/python -m harness start --config $(SERVE_CONFIG) --prometheus $(PROMETHEUS) \
		--store $(STORE) --nodes $(NODES) --balancer $(BALANCER) \
		$(if $(filter 1,$(THROUGHPUT_OPTIMIZED)),--throughput-optimized)

stop:
	@test -x $(BIN)/python && $(BIN)/python -m harness stop || true

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m loadtest.bench --quick

bench-full: install
	$(BIN)/python -m loadtest.bench --full

clean:
	rm -rf $(ARTIFACTS) $(REPO)/data .pytest_cache
