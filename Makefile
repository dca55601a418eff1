# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-slow test-runtime lint benchmark clean

# pyproject.toml says what flawscope is compatible with; constraints.txt is the exact tested set.
$(BIN)/flawscope: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[demo,serve,export,openvino,ray,test]'
	touch $@

install: $(BIN)/flawscope

demo: install
	$(BIN)/flawscope demo

lint: install
	$(BIN)/ruff check src tests tests_runtime benchmarks
	$(BIN)/ruff format --check src tests tests_runtime benchmarks
	$(BIN)/mypy

# The default suite (about 7 minutes of tests on 2 cores), after lint and type checks.
test: lint
	$(BIN)/python -m pytest -q

# The long end-to-end tests marked slow (.ci/run runs them after `make test`).
test-slow: install
	$(BIN)/python -m pytest -q -m slow

# The torch-free runtime in a slim environment of its own (runtime-requirements.txt, no torch): the full
# environment exports a small model, the slim one scores with it (.ci/run runs this too).
RUNTIME_VENV := .venv-runtime
RUNTIME_FIXTURE := build/runtime-fixture
test-runtime: install
	$(BIN)/python tests_runtime/make_fixture.py $(RUNTIME_FIXTURE)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install --quiet -c constraints.txt -r runtime-requirements.txt pytest
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --no-deps -e .
	FLAWSCOPE_RUNTIME_FIXTURE=$(RUNTIME_FIXTURE) $(RUNTIME_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_runtime

benchmark: install
	$(BIN)/python benchmarks/patchcore_benchmark.py

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) runs build src/*.egg-info
