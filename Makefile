# The README's two commands: `make run` (set up, then run the main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run agent sim test lint typecheck bench clean

setup:
	bash scripts/setup.sh

# The main job: the agent on this host, printing live TCP events as a table.
run: setup
	$(VENV)/bin/tcpscope-agent --stdout table $(ARGS)

agent: run

# The simulated multi-node cluster (tcpscope-sim): live events from Kafka, then the summary.
sim: setup
	$(VENV)/bin/tcpscope-sim $(ARGS)

lint: setup
	$(VENV)/bin/ruff check agent collector tcpscope tests bench scripts
	$(VENV)/bin/mypy

test: setup
	$(VENV)/bin/ruff check agent collector tcpscope tests bench scripts
	$(VENV)/bin/mypy
	$(PY) -m pytest -v $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
