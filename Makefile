# mer_jax: `make demo` trains and evaluates the demo end to end; `make test` runs the test suite.
# Each target creates .venv and installs the package into it when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
MODALITIES := audio video text
SEEDS := 0 1 2

.PHONY: demo test ablations explanations seeds grpo clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(DEMO)/raw/train-label.csv: | $(STAMP)
	$(BIN)/mer-jax synth --out $(DEMO)/raw

$(DEMO)/data/dataset_info.json: $(DEMO)/raw/train-label.csv
	$(BIN)/mer-jax prepare --format mer2023 --raw $(DEMO)/raw --out $(DEMO)/data

demo: $(STAMP) $(DEMO)/data/dataset_info.json
	$(BIN)/mer-jax train --config configs/demo.py --config.data.dir=$(DEMO)/data --workdir $(DEMO)/all
	$(BIN)/mer-jax evaluate --workdir $(DEMO)/all --split test

# $(call over_seeds,NAME,CONFIG,FLAGS): trains and evaluates CONFIG with FLAGS for each of SEEDS in
# $(DEMO)/NAME-seedS, then prints the mean ± std of their test reports.
define over_seeds
for s in $(SEEDS); do \
  $(BIN)/mer-jax train --config $(2) --config.data.dir=$(DEMO)/data --config.seed=$$s $(3) \
    --workdir $(DEMO)/$(1)-seed$$s && \
  $(BIN)/mer-jax evaluate --workdir $(DEMO)/$(1)-seed$$s --split test || exit 1; \
done; \
$(BIN)/mer-jax seeds $(foreach s,$(SEEDS),$(DEMO)/$(1)-seed$(s)) --split test
endef

seeds: $(STAMP) $(DEMO)/data/dataset_info.json
	$(call over_seeds,all,configs/demo.py,)

ablations: $(STAMP) $(DEMO)/data/dataset_info.json
	for m in $(MODALITIES); do \
	  $(call over_seeds,$$m,configs/demo.py:modalities=$$m,) || exit 1; \
	done

explanations: $(STAMP) $(DEMO)/data/dataset_info.json
	$(call over_seeds,explain,configs/demo.py,--config.data.explanations=True)

# GRPO against more supervised training from the same start, per seed: 80 supervised steps (sft), then
# (a) 40 GRPO steps (rl) or (b) 120 more supervised steps (more): both run 3,840 sequences through the model
# (GRPO: 8 clips x 4 samples x 40 steps, each rolled out, scored by the reference and updated).
# GRPO_RL names the GRPO runs and GRPO_FLAGS overrides their config, e.g.
# `make grpo GRPO_RL=rllr GRPO_FLAGS=--config.train.learning_rate=1e-3`.
GRPO_SFT := --config.data.dir=$(DEMO)/data --config.train.eval_every=0
GRPO_RL ?= rl
GRPO_FLAGS ?=
grpo: $(STAMP) $(DEMO)/data/dataset_info.json
	for s in $(SEEDS); do \
	  $(BIN)/mer-jax train --config configs/demo.py $(GRPO_SFT) --config.seed=$$s --config.train.steps=80 \
	    --workdir $(DEMO)/grpo-sft-seed$$s && \
	  $(BIN)/mer-jax train --config configs/grpo.py --config.data.dir=$(DEMO)/data --config.seed=$$s \
	    --config.init.run=$(DEMO)/grpo-sft-seed$$s $(GRPO_FLAGS) --workdir $(DEMO)/grpo-$(GRPO_RL)-seed$$s && \
	  $(BIN)/mer-jax train --config configs/demo.py $(GRPO_SFT) --config.seed=$$s --config.train.steps=120 \
	    --config.init.run=$(DEMO)/grpo-sft-seed$$s --workdir $(DEMO)/grpo-more-seed$$s || exit 1; \
	  for r in sft $(GRPO_RL) more; do $(BIN)/mer-jax evaluate --workdir $(DEMO)/grpo-$$r-seed$$s --split test || exit 1; done; \
	done; \
	for r in sft $(GRPO_RL) more; do $(BIN)/mer-jax seeds $(foreach s,$(SEEDS),$(DEMO)/grpo-$$r-seed$(s)) --split test; done

test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15

clean-demo:
	rm -rf $(DEMO)
