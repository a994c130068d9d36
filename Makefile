# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## set up, then play the reference scenarios on an embedded broker
	$(BIN)/bus demo

test: $(STAMP)  ## set up, then run the whole test suite (unit, integration, end to end)
	$(BIN)/python -m pytest -n 3 --dist loadfile  # one for the hand-over files, two for the rest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy bus connectors

bench: $(STAMP)  ## on Apache Kafka, each beside its raw-client limit in the same run
	$(BIN)/python bench/ingest.py --engine kafka
	$(BIN)/python -m bench.pipeline --engine kafka --events 30000
	$(BIN)/python -m bench.pipeline --engine kafka --events 30000 --workers 2
	$(BIN)/python -m bench.case_engine --engine kafka
	$(BIN)/python -m bench.gateway --engine kafka

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
