# lakesight: the two commands a newcomer needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install demo test lint clean

help: ## Show the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt package.json
	@command -v java >/dev/null || { echo "Java 17 is required (e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v npm >/dev/null || { echo "Node 20 with npm is required (e.g. apt-get install nodejs npm)"; exit 1; }
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	npm install --no-audit --no-fund --silent
	touch $(STAMP)

install: $(STAMP) ## Install Python packages (venv) and Azurite (npm) into the project

demo: install ## Run the end-to-end demo on the digits data
	$(VENV)/bin/lakesight demo

test: install ## Run the whole test suite (what CI runs)
	$(VENV)/bin/python -m pytest

lint: install ## Ruff
	$(VENV)/bin/ruff check .

clean: ## Remove local state (lake, checkpoints, MLflow, logs)
	rm -rf .lakesight
