# Two commands: `make run` (the app on 127.0.0.1:7071, zero configuration) and
# `make test` (linters, types and the whole suite). Both set up the virtualenv themselves.
# Another Python: `make test PYTHON=python3.13 VENV=.venv-3.13`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Azurite, the Table Storage emulator: the Table ledger tests start it from node_modules.
AZURITE_VERSION := 3.35.0
# checkov scans infra/ (tests/test_infra_checkov.py). It pins its own dependencies (an
# older pycep-parser among them), so it lives in a venv of its own (about 2 minutes once).
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    := .venv-checkov

# The Python versions Azure Functions runs and this app supports.
SUPPORTED := (3, 11) <= sys.version_info[:2] <= (3, 13)

.PHONY: run test bench clean azurite checkov python-check

python-check:
	@$(PYTHON) -c 'import sys; sys.exit(0 if $(SUPPORTED) else "Python %d.%d is not supported: use Python 3.11, 3.12 or 3.13 (make ... PYTHON=python3.12)" % sys.version_info[:2])'

$(VENV)/.runtime: requirements.txt | python-check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The local host's own dependencies (werkzeug, croniter): not deployed.
$(VENV)/.devhost: $(VENV)/.runtime requirements-devhost.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-devhost.txt
	touch $@

$(VENV)/.dev: $(VENV)/.devhost requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.devhost
	$(PY) -m tools.devhost

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

# Every figure, then exit 1 if any missed its target (the Table benches need Azurite).
bench: $(VENV)/.dev azurite
	@status=0; \
	$(PY) -m bench.outbound --table || status=1; \
	$(PY) -m bench.outbound_next || status=1; \
	$(PY) -m bench.delivery_report || status=1; \
	$(PY) -m bench.table_round_trips || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) .venv-3.* $(CHECKOV_VENV) .channel .pytest_cache .mypy_cache .ruff_cache node_modules
