# The README's two commands: `make run` (set up, then run the main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PY_SOURCES := agent collector tail tcpscope sim tests bench scripts
C_SOURCES = $(wildcard bpf/*.c bpf/*.h)

.PHONY: setup run agent sim broker test test-host unit format lint bench clean images test-images test-kernels

setup:
	bash scripts/setup.sh

# The main job: the whole product on one machine. tcpscope-sim builds a simulated 3-node cluster
# (pods in network namespaces and kubelet-style cgroups, an API server stand-in), runs one agent per
# node, a collector and a Kafka-protocol broker, makes traffic (ok, refused, resets both ways,
# timeouts, retransmits), and shows the live events from Kafka and the per-pod-pair summary, then
# writes the run's service map (Graphviz SVG, ./tcpscope-sim-<run>-map.svg) and says where.
# Ctrl-C stops it and removes everything it made. ARGS="--duration 60" runs it for a minute.
run: setup
	$(VENV)/bin/tcpscope-sim $(ARGS)

sim: run

# Just the agent on this host, printing live TCP events as a table.
agent: setup
	$(VENV)/bin/tcpscope-agent --stdout table $(ARGS)

# A Kafka-protocol broker on 127.0.0.1:9092 with the topic tcpscope-events (3 partitions), in memory,
# in the foreground until Ctrl-C: for trying the collector and tcpscope-tail on one machine.
broker: setup
	$(PY) -m scripts.broker $(ARGS)

# Formatting is applied, never argued about: ruff format ([tool.ruff.format] in pyproject.toml) for
# Python, clang-format (.clang-format) for bpf/.
format: setup
	$(VENV)/bin/ruff format $(PY_SOURCES)
	clang-format -i $(C_SOURCES)

# Every check, each run even when an earlier one fails: ruff's rules, both formatters in check mode,
# mypy (strict on the sources, relaxed on the tests: [[tool.mypy.overrides]] tests.*), and the
# package graph (lint-imports: [tool.importlinter] in pyproject.toml).
lint: setup
	@rc=0; \
	for check in "$(VENV)/bin/ruff check $(PY_SOURCES)" "$(VENV)/bin/ruff format --check $(PY_SOURCES)" \
	             "clang-format --dry-run -Werror $(C_SOURCES)" "$(VENV)/bin/mypy" "$(VENV)/bin/lint-imports"; do \
	  echo "lint: $$check"; $$check || rc=1; \
	done; \
	exit $$rc

# The README's test command and CI's (.ci/run): sets everything up, then every check and every test:
# the fast tier as a non-root user (proves no unmarked test needs root), the host suite (lint, then
# pytest), the images run by podman as the chart runs them, and the real-kernel matrix under QEMU
# (its guests only: the host suite already ran every kernel test on this host's kernel). About 40-45
# minutes on 2 CPUs; `make unit` (30 s) and `make test-host` (about 17 minutes) are the shorter tiers.
test: KERNELS_ARGS += --no-host
test: unit test-host test-images test-kernels

# Every check (make lint), then every test on this host's kernel except the container images.
test-host: setup lint
	$(PY) -m pytest -v --ignore=tests/containers $(PYTEST_ARGS)

# Both container images (localhost/tcpscope-{agent,collector}:dev) with podman, from a debootstrap
# base when no registry is reachable; installs podman/buildah/runc/debootstrap when missing.
images:
	bash scripts/images.sh

# The images run by podman as the chart's rendered pods run them (tests/containers; part of
# `make test`). Builds the images first; a warm run takes about a minute.
test-images: setup images
	TCPSCOPE_IMAGE_TAG=$${TAG:-dev} $(PY) -m pytest -v tests/containers $(PYTEST_ARGS)

# The fast tier: every test that needs no root, no BPF and no Kafka broker, in under 30 s.
# Run as root, it drops to uid 65534 first, so a test that needs root but is not marked fails here
# (tests/conftest.py marks tests from what they use; CONTRIBUTING.md). PYTEST_ARGS="-k config" narrows it.
unit:
	@[ -x $(PY) ] && [ -f tcpscope/v1/events_pb2.py ] || bash scripts/setup.sh
	TCPSCOPE_VENV=$(VENV) bash scripts/unit.sh $(PYTEST_ARGS)

# The real-kernel matrix: Debian 5.10, 6.1 and 6.12 booted under QEMU (TCG), plus the host's kernel
# natively, each running the kernel test subset; writes docs/kernels.json and the table in
# docs/kernels.md. Kernels are cached in $$TCPSCOPE_KERNEL_CACHE (default /var/cache/tcpscope-kernels).
# KERNELS_ARGS="--kernels 5.10" runs one.
test-kernels: setup
	bash scripts/setup.sh --kernels
	$(PY) -m scripts.kernelvm $(KERNELS_ARGS)

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
