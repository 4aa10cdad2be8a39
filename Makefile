# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-stop test faults scenarios lint docs docs-build bench clean

$(BIN)/projector: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# Until issue 23 the distribution was named `projector`: drop that older install of ours
	@# first (it owns the same `projector` script), then install under the new name.
	$(BIN)/pip uninstall --quiet --yes projector 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/projector
	$(BIN)/projector demo

# The demo keeps its local PostgreSQL running between runs; this stops it.
demo-stop: $(BIN)/projector
	$(BIN)/projector demo --stop

# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
# Two workers (pytest-xdist), each with a server of its own: most tests wait on PostgreSQL or
# on processes they started, so two at a time take about a third less time on two cores.
test: $(BIN)/projector
	$(BIN)/pytest -n 2

# The fault suite (tests/faults) for ten minutes; `make test` runs it for half a minute.
faults: $(BIN)/projector
	$(BIN)/pytest tests/faults --faults-duration 600

# The two scenarios of issue 11, twenty times each (about an hour).
scenarios: $(BIN)/projector
	$(BIN)/pytest tests/faults -m scenario --scenario-runs 20

lint: $(BIN)/projector
	$(BIN)/ruff check .
	$(BIN)/mypy --strict src tests bench docgen

# The docs site at http://127.0.0.1:8000, rebuilt as docs/ changes; docs-build is what CI runs.
docs: $(BIN)/projector
	$(BIN)/mkdocs serve

docs-build: $(BIN)/projector
	$(BIN)/mkdocs build --strict

# Sizes and scenarios: python -m bench --help (e.g. `python -m bench all --smoke`).
bench: $(BIN)/projector
	$(BIN)/python -m bench catchup

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis site
