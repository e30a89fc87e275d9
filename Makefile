# The README's commands. Everything runs inside the uv-managed virtualenv.
UV ?= uv
PYTEST_WORKERS ?= auto

.PHONY: setup services demo test lint format docs docs-check bench repo publish dist clean

setup:
	$(UV) sync --frozen

services:
	bash scripts/ensure-services.sh

demo: setup services
	$(UV) run --frozen python scripts/demo.py

test: setup services
	$(UV) run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy shared/src services/*/src scripts shared/tests tests bench examples
	$(MAKE) --no-print-directory docs-check

format: setup
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

docs: setup
	$(UV) run --frozen conveyor contracts docs
	$(UV) run --frozen conveyor config docs

docs-check: setup
	$(UV) run --frozen conveyor contracts docs --check
	$(UV) run --frozen conveyor config docs --check

bench: setup
	$(UV) run --frozen python bench/bus/run.py
	$(UV) run --frozen python bench/cli/run.py
	$(UV) run --frozen python bench/changeset/run.py
	$(UV) run --frozen python bench/deploy/run.py

dist: setup
	$(UV) build --all-packages -o dist

# The central package index (pypiserver) on 127.0.0.1:8180; uploads need CONVEYOR_REPO_USER/PASSWORD.
repo: setup
	$(UV) run --frozen python scripts/repo.py serve

publish: setup
	$(UV) run --frozen python scripts/repo.py publish

clean:
	rm -rf .demo .repo dist .pytest_cache .mypy_cache .ruff_cache
