# The commands a new user and CI run. `make test` is exactly what .ci/run calls.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint serve proto clean

test: $(VENV)/.installed lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/python protos/generate.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole service on one port with an embedded Redis and the committed tiny model.
serve: $(VENV)/.installed
	$(BIN)/sam3 serve --model-dir tests/fixtures/model-tiny --port 50051

# Regenerate client/sam3_client/proto after editing protos/.
proto: $(VENV)/.installed
	$(BIN)/python protos/generate.py

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
