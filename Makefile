# msnpipe: ImageFolder -> shards -> MSN embeddings -> label-efficiency curves.
# `make` lists the targets; knobs are variables: make shards DATA=/data/imagenet OUT=out

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
DATA    ?= out/demo/images
OUT     ?= out
SPLITS  ?= train,val
ENCODER ?= vits16_800ep
WEIGHTS ?= weights
WORKERS ?=
STORE   ?= $(OUT)/embeddings.zarr
MSN_URL := https://dl.fbaipublicfiles.com/msn
MSN_SUBSETS := https://raw.githubusercontent.com/facebookresearch/msn/main

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint shards verify embed probe active bench weights subsets clean

help: ## list the targets and their knobs
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  knobs: DATA=$(DATA) OUT=$(OUT) SPLITS=$(SPLITS) ENCODER=$(ENCODER) WEIGHTS=$(WEIGHTS)"

setup: ## create .venv with the pinned versions (reuses a .venv whose pins match)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "msnpipe needs Python >= 3.11"'
	@want=$$(sha256sum requirements.txt | cut -c1-64); \
	if [ -x $(PY) ] && [ "$$(cat $(VENV)/.requirements.sha256 2>/dev/null)" = "$$want" ]; then \
		echo "setup: $(VENV) already matches requirements.txt"; \
	else \
		$(PYTHON) -m venv --clear $(VENV) && $(PY) -m pip install -q -r requirements.txt \
		&& echo "$$want" > $(VENV)/.requirements.sha256 && echo "setup: $(VENV) ready"; \
	fi

demo: setup ## whole pipeline on a generated image set, on the CPU, in a few minutes (OUT may be s3://...)
	$(PY) -m bench.demo $(if $(findstring ://,$(OUT)),--data $(OUT)/demo --out out/demo,--out $(OUT)/demo)

test: setup ## run the test suite (tests marked gpu skip without CUDA)
	$(PY) -m pytest

lint: setup ## ruff over the code
	$(PY) -m ruff check .

shards: setup ## DATA (ImageFolder) -> OUT/shards, validated WebDataset tars + DALI indexes
	$(PY) -m shard $(DATA) $(OUT)/shards --splits $(SPLITS) $(if $(WORKERS),--workers $(WORKERS))

verify: setup ## re-read OUT/shards and check every tar, index and label
	$(PY) -m shard.verify $(OUT)/shards

embed: setup ## OUT/shards -> STORE with ENCODER (weights from WEIGHTS/ENCODER.pth.tar)
	@for s in $$(echo $(SPLITS) | tr , ' '); do \
		$(PY) -m embed $(OUT)/shards --split $$s --encoder $(ENCODER) \
			--weights $(WEIGHTS) --out $(STORE) || exit 1; \
	done

probe: setup ## few-shot curves and kNN of ENCODER from STORE -> OUT/probe, with a plot and table
	$(PY) -m probe $(STORE) --encoder $(ENCODER) --out $(OUT)/probe
	$(PY) -m probe.knn $(STORE) --encoder $(ENCODER) --out $(OUT)/probe
	$(PY) -m probe.plot $(OUT)/probe --out $(OUT)/probe/fewshot.png
	$(PY) -m probe.table $(OUT)/probe

active: setup ## active-acquisition curves of ENCODER from STORE (every strategy) -> OUT/active, with a plot
	$(PY) -m probe.active $(STORE) --encoder $(ENCODER) --out $(OUT)/active
	$(PY) -m probe.plot $(OUT)/active --out $(OUT)/active/active.png

bench: setup ## quick benchmarks of every stage against the reference path
	$(PY) -m bench all --quick

weights: ## download the official MSN checkpoint ENCODER to WEIGHTS/ENCODER.pth.tar
	@mkdir -p $(WEIGHTS)
	@case "$(ENCODER)" in vits16_800ep|vitb16_600ep|vitb4_300ep|vitl16_600ep|vitl7_200ep) ;; \
		*) echo "weights: unknown ENCODER=$(ENCODER); one of vits16_800ep vitb16_600ep vitb4_300ep vitl16_600ep vitl7_200ep"; exit 1;; esac
	curl -fL --retry 3 -o $(WEIGHTS)/$(ENCODER).pth.tar.part $(MSN_URL)/$(ENCODER).pth.tar
	mv $(WEIGHTS)/$(ENCODER).pth.tar.part $(WEIGHTS)/$(ENCODER).pth.tar

subsets: ## download MSN's official ImageNet subset files (1/2/5 imgs per class, 1%) to subsets/
	@for d in imagenet_subsets1 imagenet_subsets2 imagenet_subsets3; do mkdir -p subsets/$$d; done
	@for f in imagenet_subsets1/1imgs_class.txt imagenet_subsets1/2imgs_class.txt \
		imagenet_subsets1/5imgs_class.txt imagenet_subsets1/1percent.txt \
		imagenet_subsets2/1imgs_class.txt imagenet_subsets2/2imgs_class.txt imagenet_subsets2/5imgs_class.txt \
		imagenet_subsets3/1imgs_class.txt imagenet_subsets3/2imgs_class.txt imagenet_subsets3/3imgs_class.txt; do \
		curl -fsSL --retry 3 -o subsets/$$f $(MSN_SUBSETS)/$$f || exit 1; echo "subsets/$$f"; done

clean: ## remove outputs and caches (keeps .venv and weights)
	rm -rf $(OUT) .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
