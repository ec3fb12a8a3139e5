# Two commands on a fresh clone: `make run` (the whole pipeline on the built-in sample) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-fast docs lint bench team-up app serve-image serve-safe

# Reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed

run: install
	@if [ ! -d data/Training ] && [ ! -d data/Testing ]; then \
	  echo "data/ holds no dataset: writing the built-in synthetic sample (braintumor sample-data data)"; \
	  braintumor sample-data data; \
	fi
	dvc repro
	@echo
	@echo "Done. First: source $(VENV)/bin/activate   (puts dvc, mlflow and braintumor on PATH)"
	@echo "Report:     reports/report.html (open it in a browser)   Model card: reports/model_card.md"
	@echo "Metrics:    dvc metrics show     Plots: dvc plots show"
	@echo "MLflow UI:  mlflow ui --backend-store-uri sqlite:///mlflow.db   then open the runs table:"
	@echo "              $$(braintumor runs-url 2>/dev/null || echo http://127.0.0.1:5000)"
	@echo "Serve:      MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve \\"
	@echo "              -m models:/brain-tumor-classifier@champion --env-manager local -h 127.0.0.1 -p 5001"
	@echo "Predict:    braintumor predict data/Testing --output predictions.csv"
	@echo "Web page:   make app   then open http://127.0.0.1:8000 and drop scans on it (braintumor app)"

# Two pytest-xdist workers, a test file each at a time (a file's module fixtures stay in one process); the cores are
# shared out among them (tests/helpers.py: THREADS). TEST_WORKERS=0 runs the tests one after another.
TEST_WORKERS ?= 2
test: install lint docs
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Lint and format check (settings in pyproject.toml's [tool.ruff]); `ruff format .` and `ruff check --fix .` fix most.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or anchor fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "docs: site/index.html"

# The edit-test loop: no end-to-end runs, no network training (under 3 minutes on 2 cores).
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not trains"

# The team setup on this machine, for a trial: PostgreSQL, S3 (moto) and an MLflow server on 127.0.0.1
# (deploy/team_stack.py; needs PostgreSQL's server: apt-get install postgresql). Ctrl-C stops it.
team-up: install
	$(BIN)/python deploy/team_stack.py

# The web page for the champion model (docs/app.md): http://127.0.0.1:8000, this machine only. Ctrl-C stops it.
app: install
	$(BIN)/braintumor app

bench: install
	$(BIN)/python benchmarks/validate_speed.py
	$(BIN)/python benchmarks/train_throughput.py --images 64
	$(BIN)/python benchmarks/serve_latency.py

# The served model's container build context in build/serve-image (deploy/serve.Dockerfile, docs/serving.md):
# MODEL=models:/brain-tumor-classifier/3 for another version. Then: docker build -t brain-tumor-classifier build/serve-image
MODEL ?= models:/brain-tumor-classifier@champion
serve-image: install
	$(BIN)/python deploy/serve_image.py --model "$(MODEL)" --out build/serve-image

# The served model behind nginx (deploy/serve_safe.py, docs/serving.md#behind-a-reverse-proxy) on http://127.0.0.1:5001:
# POST /invocations (JSON, bodies capped from data.max_file_bytes, 256 MiB at most), GET /ping, 4 requests at a time.
# Ctrl-C stops both.
serve-safe: install
	$(BIN)/python deploy/serve_safe.py --model "$(MODEL)"
