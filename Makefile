# encom — `make up` runs a single-machine cluster, `make test` runs every check.
SHELL := /bin/bash
APT_PACKAGES := runc haproxy nginx git openssh-client curl ca-certificates socat wrk python3 python3-venv python3-pip e2fsprogs
# Commands that may come from elsewhere than Debian (e.g. Node.js from its own repository): install only if absent.
APT_IF_NO_COMMAND := node:nodejs npm:npm
STATE_DIR ?= /var/lib/encom
export UV_LINK_MODE := copy
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: setup up down test lint typecheck pytest bench fuzz clean

setup: .venv/.synced

.apt-ok: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	for cp in $(APT_IF_NO_COMMAND); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

.uv-ok: .apt-ok
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@touch $@

.venv/.synced: .uv-ok pyproject.toml uv.lock
	uv sync --frozen
	@touch $@

uv.lock: pyproject.toml .uv-ok
	uv lock

up: setup
	uv run python -m encom.bootstrap up --state-dir $(STATE_DIR)

down: setup
	uv run python -m encom.bootstrap down --state-dir $(STATE_DIR)

lint: setup
	uv run ruff check src tests bench
	uv run ruff format --check src tests bench

typecheck: setup
	uv run mypy

pytest: setup
	uv run pytest -q -ra

test: lint typecheck pytest

bench: setup
	uv run python -m bench

# schemathesis against a fresh controller on a temp data dir (`make test` runs a 40 s pass of the same).
FUZZ_SECONDS ?= 600
fuzz: setup
	uv run python -m tests.integration.fuzz --max-time $(FUZZ_SECONDS) --report-dir fuzz-report

clean:
	rm -rf .venv .apt-ok .uv-ok
