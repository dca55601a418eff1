# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test benchmark clean

$(BIN)/flawscope: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/flawscope

demo: install
	$(BIN)/flawscope demo

test: install
	$(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/python benchmarks/patchcore_benchmark.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
