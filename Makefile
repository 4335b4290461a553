# The README's two commands: `make demo` (main job on the embedded default) and `make test` (whole suite).
# Each creates .venv when missing and is a no-op install when it exists.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
SOURCES := $(shell find platform datasets models jobs serving cli -name '*.py' 2>/dev/null | sort) \
           $(shell find models/embedded -type f 2>/dev/null | sort)
OUT     ?= runs/demo
ARGS    ?=

export RAY_USAGE_STATS_ENABLED = 0
export RAY_AUTH_MODE = disabled
export HF_HUB_OFFLINE = 1
export OMP_WAIT_POLICY = PASSIVE

.PHONY: demo test lint bench env clean-env

env: $(VENV)/.deps $(VENV)/.mrgen

# Heavy dependencies: only when pyproject.toml changes. torch comes from the machine's local wheels.
$(VENV)/.deps: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict
	touch $@

# The strict editable install links files, so it is redone when the set of source files (or of the embedded
# bundle's files, package data) changes.
$(VENV)/.mrgen: $(VENV)/.deps setup.py $(SOURCES)
	@echo "$(SOURCES)" | cmp -s - $(VENV)/.sources || { \
	  $(BIN)/pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict && \
	  echo "$(SOURCES)" > $(VENV)/.sources; }
	touch $@

demo: env
	$(BIN)/mrgen demo --out $(OUT) $(ARGS)

test: env
	$(BIN)/python -m pytest $(ARGS)

lint: env
	$(BIN)/ruff check .

bench: env
	$(BIN)/mrgen bench all

clean-env:
	rm -rf $(VENV) build *.egg-info
