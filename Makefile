# The two quick-start commands. Each one is idempotent: it creates .venv and installs the pinned
# dependencies only when they changed, then runs its job.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: demo test setup clean

demo: $(STAMP)
	$(BIN)/weightshop doctor
	$(BIN)/weightshop demo

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,ocr,tensorboard,serve,ray]"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps rapidocr-onnxruntime
	touch $(STAMP)

clean:
	rm -rf $(VENV) weightshop-out
