# The commands a new user and CI run. `make test` is exactly what .ci/run calls.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps in one venv: serving needs the runtime only; testing, linting and benchmarking add their
# tooling on top (`make serve` first installs the runtime alone, `make test` after it adds the rest).
RUNTIME := $(VENV)/.runtime
TOOLING := $(VENV)/.installed

.PHONY: test test-labelstudio test-export-extra lint serve proto bench clean

test: $(TOOLING) lint
	$(BIN)/python -m pytest

# The Label Studio ML backend against a real Label Studio, installed into the test's own venv: minutes of
# pip install and database migrations, so not part of `make test` (labelstudio/README.md has the times).
test-labelstudio: $(TOOLING)
	$(BIN)/python -m pytest -m labelstudio tests/test_labelstudio_server.py

# The export extra as a user installs it (the README's offline command, into a fresh venv of the test's own),
# then a tiny export with it: minutes of pip install (torch, torchvision, transformers), so not part of `make test`.
test-export-extra: $(TOOLING)
	$(BIN)/python -m pytest -m export_extra tests/test_export_extra.py

lint: $(TOOLING)
	$(BIN)/python protos/generate.py --check
	$(BIN)/python protos/lint.py
	$(BIN)/python protos/breaking.py
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict client/sam3_client
	$(BIN)/mypy --strict labelstudio/sam3_label_studio

# The whole service on one port, with an embedded Redis and the committed tiny model. Loopback only:
# it has no authentication (a container or a fleet sets --host / SAM3_HOST, and --auth-token).
serve: $(RUNTIME)
	$(BIN)/sam3 serve --model-dir tests/fixtures/model-tiny --host 127.0.0.1 --port 50051

# Side-by-side benchmark on the full-size model (exported into models/full on first use: needs the export extra).
bench: $(TOOLING)
	$(BIN)/sam3 bench

# Regenerate client/sam3_client/proto after editing protos/.
proto: $(TOOLING)
	$(BIN)/python protos/generate.py

# Two distributions, both editable: the SDK (client/, sam3-client) and the service that depends on it.
$(RUNTIME): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./client -e .
	touch $@

# The test extra (pytest, linters, type checkers, the proto compiler, OpenVINO, ...), the bench extra and
# the Label Studio ML backend (labelstudio/, sam3-label-studio), another SDK user that the tests cover.
$(TOOLING): $(RUNTIME) labelstudio/pyproject.toml
	$(BIN)/pip install --quiet -e ./client -e '.[test,bench]' -e ./labelstudio
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
