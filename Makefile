# KubeSolo OS — entry points. `make build` and `make test` are the README's two commands.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:/usr/sbin:/sbin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# Extra arguments for ansible-playbook (e.g. ARGS='-e kubesolo_binary_src=/path/kubesolo').
ARGS ?=
# Extra arguments for pytest (e.g. PYTEST_ARGS='-k cpio').
PYTEST_ARGS ?=

.PHONY: deps build test lint sanity bench clean

deps:
	scripts/bootstrap.sh

build: deps
	ansible-playbook build.yml $(ARGS)

test: deps
	pytest $(PYTEST_ARGS)

lint: deps
	pytest tests/test_lint.py $(PYTEST_ARGS)

sanity: deps
	pytest tests/test_sanity.py $(PYTEST_ARGS)

clean:
	rm -rf build output
