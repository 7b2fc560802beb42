# moe-swarm: every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
OVERLAY ?= cpu
EXPERIMENT ?= quickstart
IMAGE ?= moe-swarm:0.1.0
TORCH_INDEX_URL ?=

.DEFAULT_GOAL := help
.PHONY: help install train swarm swarm-study moe-study swarm-answers test test-fast bench bench-quick bench-serve serve lint format docker-build fly-deploy k8s-render k8s-apply clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install torch, then the project with dev extras

train: $(STAMP) ## run the main job on the CPU (experiment=quickstart); extra Hydra overrides via ARGS="..."
	$(BIN)/moe-swarm-train experiment=quickstart $(ARGS)

SWARM_RUN ?= swarm
RUNS := $(or $(MOE_SWARM_RUNS_DIR),runs)
SWARM_FAMILY ?=
SWARM_TASK ?=
SWARM_TASK_KWARGS ?= {scratchpad: true}
SWARM_EXPERIMENT = reasoning_steps$(if $(SWARM_FAMILY),_$(SWARM_FAMILY))
SWARM_BASE = $(if $(SWARM_TASK),experiment=reasoning_steps_task data.task=$(SWARM_TASK) 'data.task_kwargs=$(SWARM_TASK_KWARGS)',experiment=$(SWARM_EXPERIMENT))
SWARM_TEST ?= 500
SWARM_FAMILIES ?= mul arith chase
# the step checker: full (a fine-tuned model copy + head) | trunk (a head on the generator's hidden states)
SWARM_CHECKER ?= full
# how it is trained: step_checker (the plurality's rollouts) | step_checker_on_policy (+ rounds the checker steers)
SWARM_OBJECTIVE ?= step_checker_on_policy
SWARM_SEEDS ?= 1234 1 2
swarm: $(STAMP) ## step-level swarm: scratchpad base (experiment=reasoning_steps; SWARM_FAMILY=arith|chase, or SWARM_TASK=package.module:Class) -> step checker -> eval vs controls, runs/<SWARM_RUN>-*
	$(BIN)/moe-swarm-train $(SWARM_BASE) run_id=$(SWARM_RUN)-base trainer.enable_progress_bar=false threads=1 $(ARGS)
	$(BIN)/moe-swarm-swarm-train checkpoint=$(RUNS)/$(SWARM_RUN)-base/checkpoints/last.ckpt swarm_objective=$(SWARM_OBJECTIVE) module.kind=$(SWARM_CHECKER) run_id=$(SWARM_RUN)-checker trainer.enable_progress_bar=false threads=1
	$(BIN)/moe-swarm-swarm-eval checkpoint=$(RUNS)/$(SWARM_RUN)-checker/checkpoints/swarm.ckpt mode=steps n_test=$(SWARM_TEST) threads=1

swarm-study: $(STAMP) ## the step swarm, unchanged, on SWARM_SEEDS base-model seeds x SWARM_FAMILIES (mul arith chase; a package.module:Class works too); long
	for fam in $(SWARM_FAMILIES); do for seed in $(SWARM_SEEDS); do \
	  case $$fam in \
	    *:*) base="experiment=reasoning_steps_task data.task=$$fam"; kw='data.task_kwargs=$(SWARM_TASK_KWARGS)';; \
	    mul) base=experiment=reasoning_steps; kw=;; \
	    *) base=experiment=reasoning_steps_$$fam; kw=;; \
	  esac; run=study-$$(echo $$fam | tr ':.' '--')-s$$seed; \
	  $(BIN)/moe-swarm-train $$base $${kw:+"$$kw"} seed=$$seed run_id=$$run-base trainer.enable_progress_bar=false threads=1 || exit 1; \
	  $(BIN)/moe-swarm-swarm-train checkpoint=$(RUNS)/$$run-base/checkpoints/last.ckpt swarm_objective=$(SWARM_OBJECTIVE) module.kind=$(SWARM_CHECKER) run_id=$$run-checker trainer.enable_progress_bar=false threads=1 || exit 1; \
	  $(BIN)/moe-swarm-swarm-eval checkpoint=$(RUNS)/$$run-checker/checkpoints/swarm.ckpt mode=steps n_test=$(SWARM_TEST) problem_seed=$$seed threads=1 || exit 1; \
	done; done
	$(BIN)/python -m moe_swarm.reporting.swarm_study $(RUNS)/study-*-checker/swarm_eval --out $(RUNS)/swarm-study

moe-study: $(STAMP) ## dense vs MoE at equal active params: E 4..64, fine-grained + shared experts, 3 seeds; ~45 min on 2 cores
	$(BIN)/python -m moe_swarm.reporting.moe_study run --out $(RUNS)/moe-study --jobs 2 $(ARGS)
	$(BIN)/python -m moe_swarm.reporting.moe_study stepcost --out $(RUNS)/moe-study --threads 1
	$(BIN)/python -m moe_swarm.reporting.moe_study report --out $(RUNS)/moe-study

swarm-answers: $(STAMP) ## answer-level baseline: base MoE (experiment=reasoning_swarm) -> value head -> swarm eval
	$(BIN)/moe-swarm-train experiment=reasoning_swarm run_id=$(SWARM_RUN)-answers-base trainer.enable_progress_bar=false $(ARGS)
	$(BIN)/moe-swarm-swarm-train checkpoint=$(RUNS)/$(SWARM_RUN)-answers-base/checkpoints/last.ckpt run_id=$(SWARM_RUN)-answers-head trainer.enable_progress_bar=false
	$(BIN)/moe-swarm-swarm-eval checkpoint=$(RUNS)/$(SWARM_RUN)-answers-head/checkpoints/swarm.ckpt threads=1

TEST_WORKERS ?= 3
test: $(STAMP) ## run the whole test suite (TEST_WORKERS=3 processes, whole files each; TEST_WORKERS=0: one process)
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(ARGS)

test-fast: $(STAMP) ## run the tests not marked slow (skips multi-process, sweep and wheel-build tests)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

bench: $(STAMP) ## run every benchmark suite (bench-results/<timestamp>/; ARGS="--max-minutes 20" caps it)
	$(BIN)/moe-swarm-bench run $(ARGS)

bench-quick: $(STAMP) ## a small version of every benchmark suite (< 3 min on 2 cores)
	$(BIN)/moe-swarm-bench run --quick $(ARGS)

bench-serve: $(STAMP) ## RunInference throughput and latency with/without dynamic batching
	$(BIN)/python -m moe_swarm.bench.loadtest $(ARGS)

serve: $(STAMP) ## start the gRPC control sidecar (Hydra overrides via ARGS)
	$(BIN)/moe-swarm-serve $(ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff autofix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docker-build: ## build the image (IMAGE=..., TORCH_INDEX_URL=<CPU wheel index> for a CPU-only image)
	docker build -f docker/Dockerfile -t $(IMAGE) --build-arg "TORCH_SPEC=$(TORCH_SPEC)" --build-arg "TORCH_INDEX_URL=$(TORCH_INDEX_URL)" .

fly-deploy: ## deploy the sidecar + CPU trainer to Fly Machines (needs flyctl and `fly auth login`)
	fly deploy -c fly/fly.toml --build-arg "TORCH_SPEC=$(TORCH_SPEC)" --build-arg "TORCH_INDEX_URL=$(TORCH_INDEX_URL)" $(ARGS)

k8s-render: $(STAMP) ## print the Kubernetes job: OVERLAY=cpu|gpu|fks, EXPERIMENT, IMAGE, overrides via ARGS
	$(BIN)/moe-swarm-launch --overlay $(OVERLAY) --image $(IMAGE) experiment=$(EXPERIMENT) $(ARGS)

k8s-apply: $(STAMP) ## render the job (as k8s-render) and kubectl apply it to the current context
	$(BIN)/moe-swarm-launch --overlay $(OVERLAY) --image $(IMAGE) experiment=$(EXPERIMENT) $(ARGS) | kubectl apply -f -

clean: ## remove caches and scratch outputs (outputs, multirun, lightning_logs, bench-results); keeps .venv, runs/ and serve-state/
	rm -rf .pytest_cache .ruff_cache .hypothesis outputs multirun lightning_logs bench-results
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
