# The two commands a newcomer needs:
#   make demo   - the main job on the embedded default (SQLite, no broker): the sample programme
#                 summarised, then served by the HTTP API (Ctrl-C stops it)
#   make test   - every check and test, against real PostgreSQL and Kafka started by deploy/up
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install demo up down status lint unit test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/prm demo
	$(BIN)/prm api

up:
	deploy/up

down:
	deploy/down

status:
	deploy/status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: $(STAMP)
	deploy/up
	$(MAKE) --no-print-directory lint
	. deploy/env.sh && $(BIN)/pytest
