# Two commands: `make run` (the app on 127.0.0.1:7071, zero configuration) and
# `make test` (linters, types and the whole suite). Both set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Azurite, the Table Storage emulator: the Table ledger tests start it from node_modules.
AZURITE_VERSION := 3.35.0
# checkov scans infra/ (tests/test_infra_checkov.py). It pins its own dependencies (an
# older pycep-parser among them), so it lives in a venv of its own (about 2 minutes once).
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    := .venv-checkov

.PHONY: run test bench clean azurite checkov

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) -m channel.devhost

# Installs Azurite once (about 20 s) when npm exists; without npm the Table tests skip.
azurite:
	@if grep -qs '"version": "$(AZURITE_VERSION)"' node_modules/azurite/package.json; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing azurite@$(AZURITE_VERSION) into node_modules (once)"; \
	  npm install --prefix . --no-save --no-audit --no-fund --loglevel=error \
	    azurite@$(AZURITE_VERSION); \
	else \
	  echo "npm not found: the Table Storage ledger tests will be skipped"; \
	fi

$(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  checkov==$(CHECKOV_VERSION)
	touch $@

checkov: $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)

test: $(VENV)/.dev azurite checkov
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(VENV)/.dev
	$(PY) -m bench.outbound --table
	$(PY) -m bench.delivery_report
	$(PY) -m bench.outbound_acs

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .channel .pytest_cache .mypy_cache .ruff_cache node_modules
