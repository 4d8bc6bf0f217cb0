# lakesight: the two commands a newcomer needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The spark engine's JVM packages (delta-spark, hadoop-azure), resolved from Maven Central at install time.
JARS := .jars
JARS_STAMP := $(JARS)/.installed
# The inner loop: everything that needs no Spark session, no Azurite and no multi-process run.
FAST := not spark and not azurite and not slow and not e2e

# Label Studio, the labeling service on the laptop (docs/LABELING.md): a venv of its own, its pins
# (Django, numpy, pydantic, boto3, ...) are not ours.
LABELSTUDIO_VENV ?= .venv-labelstudio
LABELSTUDIO_STAMP := $(LABELSTUDIO_VENV)/.installed
LABELSTUDIO_VERSION := 1.23.2
LABELSTUDIO_LOCK := infra/local/label-studio-constraints.txt

# make test-repeat: the tests matching K (pytest -k), or in T (paths), run N times in a row; stops at the first failure.
N ?= 10
K ?=
T ?= tests

.PHONY: help install install-legacy jars browser labelstudio demo test test-fast test-repeat lint format clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt package.json
	@command -v java >/dev/null || { echo "Java 17 is required (e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v npm >/dev/null || { echo "Node 20 with npm is required (e.g. apt-get install nodejs npm)"; exit 1; }
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	npm install --no-audit --no-fund --silent
	touch $(STAMP)

$(JARS_STAMP): jvm/pom.xml $(STAMP)
	@command -v mvn >/dev/null || { echo "Maven is required for the spark engine's jars (e.g. apt-get install maven)"; exit 1; }
	rm -rf $(JARS)
	mvn -q -B -f jvm/pom.xml dependency:copy-dependencies -Djars.dir=$(abspath $(JARS))
	$(PY) -m infra.jvm prune $(JARS)
	touch $(JARS_STAMP)

jars: $(JARS_STAMP) ## Resolve the spark engine's JVM packages into .jars (part of install)

install: $(STAMP) $(JARS_STAMP) $(LABELSTUDIO_STAMP) browser ## Install Python packages (venv), the JVM jars (Maven), Azurite (npm), Label Studio and, where allowed, Chromium

$(LABELSTUDIO_STAMP): $(LABELSTUDIO_LOCK)
	python3.11 -m venv $(LABELSTUDIO_VENV) 2>/dev/null || python3 -m venv $(LABELSTUDIO_VENV)
	$(LABELSTUDIO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LABELSTUDIO_VENV)/bin/python -m pip install --quiet -c $(LABELSTUDIO_LOCK) label-studio==$(LABELSTUDIO_VERSION)
	touch $(LABELSTUDIO_STAMP)

labelstudio: $(LABELSTUDIO_STAMP) ## Build .venv-labelstudio (label-studio from PyPI; part of install)

# The status page is checked in headless Chromium: Debian's package, never a browser download.
# Installed when missing and this user may run apt-get; otherwise that one test says why it skips
# (and fails under CI=true, where a missing browser is a broken install, not a choice).
browser: ## Install Debian's chromium for the status-page test when it is missing and apt-get is usable
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium (status-page test)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium"; \
	  else echo "note: chromium missing and apt-get not usable as this user; the status-page screenshot test will skip"; fi; }

demo: install ## Run the end-to-end demo on the digits data
	$(VENV)/bin/lakesight demo

test: install ## Run the whole test suite (what CI runs)
	$(PY) -m pytest

test-fast: install ## The inner loop: tests without Spark, Azurite or multi-process runs (~1 min)
	$(PY) -m pytest -m "$(FAST)"

test-repeat: install ## Run tests N times in a row to show they hold, e.g. make test-repeat N=10 K=sigkill T=tests/streams
	@for i in $$(seq 1 $(N)); do \
		echo "== run $$i of $(N)"; \
		$(PY) -m pytest -x -q -p no:cacheprovider $(T) $(if $(K),-k "$(K)") || { echo "failed on run $$i of $(N)"; exit 1; }; \
	done; echo "passed $(N) runs in a row"

lint: install ## Formatter check, ruff, the import contracts, mypy on every package
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install ## Apply the formatter and ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Remove local state (lake, checkpoints, MLflow, logs)
	rm -rf .lakesight

# The legacy stack (docs/LEGACY.md): TensorFlow 2.15 + Keras 2, Horovod 0.28.1 (Gloo), Petastorm 0.13.1.
LEGACY_VENV ?= .venv-legacy
LEGACY_STAMP := $(LEGACY_VENV)/.installed

$(LEGACY_STAMP): infra/legacy/requirements.txt infra/legacy/constraints.txt infra/legacy/install.sh pyproject.toml
	bash infra/legacy/install.sh $(LEGACY_VENV)
	touch $(LEGACY_STAMP)

install-legacy: $(LEGACY_STAMP) ## Build .venv-legacy for --strategy horovod / --feed petastorm (Horovod wheel cached)
