# dlrmkit: `make demo` runs the main job on built-in defaults; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo

.PHONY: setup demo test bench clean

$(BIN)/dlrmkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(BIN)/dlrmkit

# Synthetic Criteo-like data (Kaggle cardinalities), the kaggle preset trained on it, test AUC
# printed beside the oracle AUC.
demo: setup
	$(BIN)/dlrmkit demo --out $(DEMO)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_loadgen.py

clean:
	rm -rf $(VENV) runs
