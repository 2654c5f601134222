# The two commands of README.md: `make test` and `make demo`. Both build .venv from the
# project's own files, with torch pinned to the local CPU build by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo

.PHONY: test demo

# The executorch extra goes in with --no-deps: executorch pins numpy>=2, PyTriton (serve) numpy<2.
EXECUTORCH_EXTRA = $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["executorch"])'

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[train,bench,serve,dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-warn-conflicts -c constraints.txt $$($(EXECUTORCH_EXTRA))
	touch $@

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q --durations=15

demo: $(BIN)/.installed
	$(BIN)/python -m asc_deploy.bench.main_job --out $(DEMO)
