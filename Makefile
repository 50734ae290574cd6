# Two entry points on a fresh clone: `make repro` runs the pipeline, `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
# boto's default of 3 attempts gives up within a short outage; `dvc push/pull` and the s3:// loader ride one out.
export AWS_RETRY_MODE ?= standard
export AWS_MAX_ATTEMPTS ?= 10

.PHONY: setup repro test lint test-slow test-fuzz bench gpu-check clean report-diff docs-images

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

repro: setup
	dvc repro

LINTED := src tests benchmarks stages flows

test: setup
	ruff check $(LINTED)
	pytest -q

lint: setup
	ruff check --fix $(LINTED)

test-slow: setup
	pytest -q -m "slow and not fuzz_long"

test-fuzz: setup
	pytest -q -m fuzz_long

# Every ratio benchmark side by side; figures land in benchmarks/results.json and benchmarks/README.md.
bench: setup
	python benchmarks/run.py

# On a machine with a GPU, in under 8 minutes: DiT-B/2 and DiT-XL/2 MFU in bf16, then 200 steps of the gpu-b2-256 preset
# on the default data (SD's VAE architecture, random weights); figures land in benchmarks/results.json.
gpu-check: setup
	test -f data/shards/index.parquet || dvc repro shard
	python benchmarks/train_step.py --gpu --steps 10
	python benchmarks/gpu_train.py

# Markdown comparison of the workspace's metrics, params and figures with BASE (default HEAD~1).
BASE ?= HEAD~1
report-diff: setup
	python -m handloom.report.diff $(BASE) build/report-diff

# The README's example outputs (docs/generate/pose.png, view.png): the README's generate commands on the default
# checkpoint, never edited by hand. Trains first when there is no checkpoint (`dvc pull data/models` fetches one).
CHECKPOINT := data/models/last.ckpt
DOCS_GENERATE := --reference docs/generate/reference.png --seed 0 --size 256 --checkpoint $(CHECKPOINT)
docs-images: setup
	test -f $(CHECKPOINT) || dvc repro train
	handloom generate $(DOCS_GENERATE) --target docs/generate/pose_target.json --mode pose --out docs/generate/pose.png
	handloom generate $(DOCS_GENERATE) --target docs/generate/view_target.png --mode view --out docs/generate/view.png

clean:
	rm -rf $(VENV)

# --- Orchestration with Prefect (README: "Orchestration with Prefect") --------------------------------
# Everything listens on 127.0.0.1. A server on SQLite suits one user; `prefect-server-postgres` for more.
PREFECT_PORT ?= 4200
PREFECT_POOL ?= handloom
PG_PORT ?= 5433
PG_DATA ?= /var/tmp/handloom-postgres
PREFECT_TARGETS := prefect-server prefect-server-postgres prefect-worker prefect-deploy
.PHONY: $(PREFECT_TARGETS) prefect-profile postgres postgres-stop
$(PREFECT_TARGETS): export PREFECT_API_URL := http://127.0.0.1:$(PREFECT_PORT)/api
$(PREFECT_TARGETS): export PREFECT_SERVER_DATABASE_TIMEOUT := 30

# A Prefect profile `handloom`, made the active one: every later shell's `prefect ...` (deployment run, flow-run ls)
# talks to this server instead of starting a temporary one. `prefect profile use ephemeral` undoes it.
prefect-profile: setup
	prefect profile inspect handloom >/dev/null 2>&1 || prefect profile create handloom >/dev/null
	prefect --profile handloom config set PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	  PREFECT_SERVER_ANALYTICS_ENABLED=false >/dev/null
	prefect profile use handloom >/dev/null 2>&1 || true  # exits 1 when the server is not up yet, after switching
	@echo "active Prefect profile: handloom (PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api)"

prefect-server: setup
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

postgres:
	PG_PORT=$(PG_PORT) PG_DATA=$(PG_DATA) flows/postgres.sh start

postgres-stop:
	PG_PORT=$(PG_PORT) PG_DATA=$(PG_DATA) flows/postgres.sh stop

prefect-server-postgres: setup postgres
	PREFECT_API_DATABASE_CONNECTION_URL=$$(PG_PORT=$(PG_PORT) flows/postgres.sh url) \
	  prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

prefect-deploy: setup prefect-profile
	prefect work-pool inspect $(PREFECT_POOL) >/dev/null 2>&1 || prefect work-pool create $(PREFECT_POOL) --type process
	prefect --no-prompt deploy --all --pool $(PREFECT_POOL)

prefect-worker: setup
	prefect worker start --pool $(PREFECT_POOL) --type process
