# Two entry points, both self-installing on a fresh machine:
#   make run   -> reproduce the paper (report in results/)
#   make test  -> the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/icl-dynamics reproduce --out results --overwrite

test: $(STAMP)
	bash scripts/install-browser
	ICL_TEST_ARTIFACTS=$(CURDIR)/test-output $(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) results
