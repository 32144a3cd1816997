# mer_jax: `make demo` trains and evaluates the demo end to end; `make test` runs the test suite.
# Each target creates .venv and installs the package into it when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
MODALITIES := audio video text
SEEDS := 0 1 2

.PHONY: demo test ablations explanations seeds scarce clean-demo bench bench-train bench-train-large bench-model \
  bench-data bench-eval bench-eval-before robustness missing grpo

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

# Scarce labels: per seed, train on the first SCARCE percent of train; that run pseudo-labels the rest of train
# with its labels hidden; a retrain starts from it on the same SCARCE percent plus the kept pseudo-labels.
SCARCE := 10
PSEUDO_FLAGS := --threshold 0.9 --per_class 60
PSEUDO_WEIGHT := 1
scarce: $(STAMP) $(DEMO)/data/dataset_info.json
	for s in $(SEEDS); do \
	  l=$(DEMO)/scarce$(SCARCE)-seed$$s; p=$(DEMO)/scarce$(SCARCE)-pseudo-seed$$s; \
	  $(BIN)/mer-jax train --config configs/demo.py --config.data.dir=$(DEMO)/data --config.seed=$$s \
	    --config.data.train_split='train[:$(SCARCE)%]' --workdir $$l && \
	  $(BIN)/mer-jax evaluate --workdir $$l --split test && \
	  $(BIN)/mer-jax pseudo-label --workdir $$l --split 'train[$(SCARCE)%:]' --hide_labels $(PSEUDO_FLAGS) \
	    --out $$l/pseudo.csv && \
	  $(BIN)/mer-jax train --config configs/demo.py --config.data.dir=$(DEMO)/data --config.seed=$$s \
	    --config.data.train_split='train[:$(SCARCE)%]' --config.data.pseudo_labels=$$l/pseudo.csv=$(PSEUDO_WEIGHT) \
	    --config.init.run=$$l --workdir $$p && \
	  $(BIN)/mer-jax evaluate --workdir $$p --split test || exit 1; \
	done; \
	$(BIN)/mer-jax seeds $(foreach s,$(SEEDS),$(DEMO)/scarce$(SCARCE)-seed$(s)) --split test; \
	$(BIN)/mer-jax seeds $(foreach s,$(SEEDS),$(DEMO)/scarce$(SCARCE)-pseudo-seed$(s)) --split test

# Speed: each target prints a markdown table (README, Speed) and keeps it in $(BENCH)/.
BENCH := runs/bench
# The last commit whose evaluation ran the whole model once per candidate label.
EVAL_BEFORE := 6ca1169
BENCH_LLM := $(BIN)/mer-jax bench --what train --vs torch --threads 2 --repeats 5 --steps 1

bench: bench-train bench-train-large bench-model bench-data bench-eval

bench-train: $(STAMP)
	mkdir -p $(BENCH) && $(BENCH_LLM) --attention xla,einsum,flash | tee $(BENCH)/train_512.md

bench-train-large: $(STAMP)
	mkdir -p $(BENCH) && $(BENCH_LLM) --attention einsum,flash --width 1024 --layers 8 --seq 1024 | tee $(BENCH)/train_1024.md

bench-model: $(STAMP)
	mkdir -p $(BENCH) && $(BIN)/mer-jax bench --what train --config configs/demo.py --steps 5 | tee $(BENCH)/model.md

bench-data: $(STAMP) $(DEMO)/data/dataset_info.json
	mkdir -p $(BENCH) && $(BIN)/mer-jax bench --what data --config configs/demo.py --config.data.dir=$(DEMO)/data \
	  --steps 5 | tee $(BENCH)/data.md

bench-eval: $(STAMP) $(DEMO)/data/dataset_info.json
	mkdir -p $(BENCH) && $(BIN)/mer-jax bench --what eval --config configs/demo.py --config.data.dir=$(DEMO)/data \
	  --split test | tee $(BENCH)/eval.md

# The same evaluation timing on the package as it was at $(EVAL_BEFORE) (its Predictor, today's timing code).
bench-eval-before: $(STAMP) $(DEMO)/data/dataset_info.json
	rm -rf $(BENCH)/before && mkdir -p $(BENCH)/before
	git archive $(EVAL_BEFORE) mer_jax configs | tar -x -C $(BENCH)/before
	cp mer_jax/eval/bench_loop.py mer_jax/eval/bench_train.py $(BENCH)/before/mer_jax/eval/
	cd $(BENCH)/before && PYTHONPATH=. $(abspath $(BIN))/python -c "from configs import demo; \
	  from mer_jax.eval.bench_loop import bench_eval; c = demo.get_config(); \
	  c.data.dir = '$(abspath $(DEMO)/data)'; print(bench_eval(c, 'test', 5))" | tee ../eval_before.md

# Augmentation experiments. The baseline is `make seeds`' runs (all-seedS: no augmentation, no dropout).
NOISY := $(DEMO)/noisy-data
ROBUST_AUG := --config.augment.noise_prob=0.5 --config.augment.noise_snr=0,5,10,20 --config.augment.gain_prob=0.3 \
  --config.augment.spec_time_masks=1 --config.augment.spec_freq_masks=1 --config.augment.blur_prob=0.5 \
  --config.augment.blur=2,4 --config.augment.flip_prob=0.5
DROPOUT := --config.augment.drop_audio=0.2 --config.augment.drop_video=0.2 --config.augment.drop_text=0.2

# $(call eval_seeds,NAME,FLAGS): evaluates $(DEMO)/NAME-seedS on the test split with FLAGS for each of SEEDS,
# then prints the mean ± std of those reports.
define eval_seeds
for s in $(SEEDS); do \
  $(BIN)/mer-jax evaluate --workdir $(DEMO)/$(1)-seed$$s --split test $(2) || exit 1; \
done; \
$(BIN)/mer-jax seeds $(foreach s,$(SEEDS),$(DEMO)/$(1)-seed$(s)) --split test $(2)
endef

$(DEMO)/noisy/train-label.csv: $(DEMO)/raw/train-label.csv
	$(BIN)/mer-jax corrupt --raw $(DEMO)/raw --out $(DEMO)/noisy --protocol mer-noise --snr 5 --blur 4

$(NOISY)/dataset_info.json: $(DEMO)/noisy/train-label.csv
	$(BIN)/mer-jax prepare --format mer2023 --raw $(DEMO)/noisy --out $(NOISY)

robustness: $(STAMP) $(DEMO)/data/dataset_info.json $(NOISY)/dataset_info.json
	$(call over_seeds,all,configs/demo.py,)
	$(call over_seeds,robust,configs/demo.py,$(ROBUST_AUG))
	$(call eval_seeds,all,--data $(NOISY))
	$(call eval_seeds,robust,--data $(NOISY))

missing: $(STAMP) $(DEMO)/data/dataset_info.json
	$(call over_seeds,all,configs/demo.py,)
	$(call over_seeds,dropout,configs/demo.py,$(DROPOUT))
	for m in $(MODALITIES); do \
	  for r in all dropout; do $(call eval_seeds,$$r,--drop $$m) || exit 1; done; \
	done

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
