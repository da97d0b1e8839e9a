# KubeSolo OS — entry points. `make build` and `make test` are the README's two commands.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:/usr/sbin:/sbin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# Extra arguments for ansible-playbook (e.g. ARGS='-e kubesolo_binary_src=/path/kubesolo').
ARGS ?=
# Extra arguments for pytest (e.g. PYTEST_ARGS='-k cpio').
PYTEST_ARGS ?=

.PHONY: deps build test test-real lint sanity bench bench-quick clean

deps:
	scripts/bootstrap.sh

build: deps
	ansible-playbook build.yml $(ARGS)

test: deps
	pytest $(PYTEST_ARGS)

# Before each release: the end-to-end test with the REAL KubeSolo (tests/test_real_kubesolo.py): downloads the
# pinned release (SHA256-checked), builds into build/test-real, boots it with 2 GiB, waits for the node to be
# Ready, runs a pod with data, reboots, checks both came back. Needs the release host, a container registry
# and kubectl (requirements-real.txt); skipped, naming the URL, when the release host cannot be reached.
# `make test` never runs it (deselected unless pytest gets --real).
test-real: deps
	pip install -q -r requirements-real.txt
	pytest --real tests/test_real_kubesolo.py $(PYTEST_ARGS)

lint: deps
	pytest tests/test_lint.py $(PYTEST_ARGS)

sanity: deps
	pytest tests/test_sanity.py $(PYTEST_ARGS)

clean:
	rm -rf build output

# Benchmark (scripts/bench.py): build times, cpio_pack vs GNU cpio, compression choices, sizes,
# boot time and memory under QEMU TCG -> build/bench/bench.md and bench.json. Full: BENCH_RUNS runs
# per figure (median); bench-quick: one run each (what CI runs, through tests/test_bench.py).
BENCH_RUNS ?= 5
BENCH_ARGS ?=

bench: deps
	python scripts/bench.py --runs $(BENCH_RUNS) $(BENCH_ARGS)

bench-quick: deps
	python scripts/bench.py --quick $(BENCH_ARGS)
