# pgqueue: `make run` and `make test` are all a newcomer needs (Python 3.11+ and make).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test bench lint clean demo-api-ingest

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m app run --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# engine (enqueue, drain, wake-up vs the raw Postgres ceilings), then SSE at scale (1,000
# clients on one app process, 5,000 on four) and log-file ingestion; each adds its section to bench-results.json
bench: $(STAMP)
	$(PY) -m pgqueue bench --output bench-results.json
	$(PY) -m pgqueue.bench_scaleout --output bench-results.json
	$(PY) -m app bench-sse --output bench-results.json
	$(PY) -m app bench-ingest --output bench-results.json
	$(PY) -m app bench-api-ingest --output bench-results.json

# API ingest end to end: the local simulator (rate limit, faults, mixed timestamps), then
# `python -m app ingest-api` against it, then the rows compared with the simulator's ids
demo-api-ingest: $(STAMP)
	$(PY) -m app.bench.api_demo

lint: $(STAMP)
	$(VENV)/bin/ruff check pgqueue app tests
	$(VENV)/bin/mypy pgqueue

clean:
	rm -rf $(VENV) .data *.egg-info
