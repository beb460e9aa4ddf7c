# stepchain: `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-chaos bench-scale clean

# torch is pinned and installed first: an unpinned torch (or one pulled in by a dependency)
# would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stepchain devnet --validators 4 --demo

# The whole suite, slow end-to-end tests included. pytest exits 5 when it collected
# nothing: that is a failure here, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/tx_throughput.py
	$(BIN)/python benchmarks/network_throughput.py
	$(BIN)/python benchmarks/solver_overhead.py
	$(BIN)/python benchmarks/verification.py
	$(BIN)/python benchmarks/mempool_admission.py
	$(BIN)/python benchmarks/dispute.py
	$(BIN)/python benchmarks/explorer_pages.py

# Models of 1M to 124M parameters: checkpoints, solver overhead, memory per role, P2P; about 10 minutes.
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py

# Needs root (network namespaces); about 9 minutes.
bench-chaos: $(STAMP)
	$(BIN)/python benchmarks/network_chaos.py

clean:
	rm -rf $(VENV) *.egg-info
