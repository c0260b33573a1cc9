# The README's two commands: `make demo` and `make test`. Both set up what is missing first.
.PHONY: setup demo test test-fast lint typecheck bench clean-demo

PYTHON := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

# Lint, formatting and types first: they take seconds and fail the run (and CI) on their own.
lint: setup
	@.venv/bin/ruff check packager serving tests bench scripts
	@.venv/bin/ruff format --check --quiet packager serving tests bench scripts

typecheck: setup
	@.venv/bin/mypy

test: lint typecheck
	@$(PYTHON) -m pytest -ra

# The tier that needs neither Docker nor a model server: under a minute, for every edit.
test-fast: lint typecheck
	@$(PYTHON) -m pytest -ra -m fast

bench: setup
	@for b in bench/*.py; do $(PYTHON) $$b; done

clean-demo:
	rm -rf demo-out
