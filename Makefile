# mer_jax: `make demo` trains and evaluates the demo end to end; `make test` runs the test suite.
# Each target creates .venv and installs the package into it when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
MODALITIES := audio video text

.PHONY: demo test ablations explanations seeds clean-demo

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

ablations: $(STAMP) $(DEMO)/data/dataset_info.json
	for m in $(MODALITIES); do \
	  $(BIN)/mer-jax train --config configs/demo.py:modalities=$$m --config.data.dir=$(DEMO)/data \
	    --workdir $(DEMO)/$$m && \
	  $(BIN)/mer-jax evaluate --workdir $(DEMO)/$$m --split test || exit 1; \
	done

explanations: $(STAMP) $(DEMO)/data/dataset_info.json
	$(BIN)/mer-jax train --config configs/demo.py --config.data.dir=$(DEMO)/data --config.data.explanations=True \
	  --workdir $(DEMO)/explain
	$(BIN)/mer-jax evaluate --workdir $(DEMO)/explain --split test

seeds: $(STAMP) $(DEMO)/data/dataset_info.json
	for s in 0 1 2; do \
	  $(BIN)/mer-jax train --config configs/demo.py --config.data.dir=$(DEMO)/data --config.seed=$$s \
	    --workdir $(DEMO)/seed$$s && \
	  $(BIN)/mer-jax evaluate --workdir $(DEMO)/seed$$s --split test || exit 1; \
	done
	$(BIN)/mer-jax seeds $(DEMO)/seed0 $(DEMO)/seed1 $(DEMO)/seed2 --split test

test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15

clean-demo:
	rm -rf $(DEMO)
