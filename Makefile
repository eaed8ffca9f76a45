# Attention-VGG16 export toolchain. Every target sets itself up: `make engine VARIANT=se`
# and `make test` work on a fresh machine with Python 3.10+.

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed

VARIANT     ?= se
CHECKPOINT  ?=
CALIB_DIR   ?=
IMG_SIZE    ?= 224
NUM_CLASSES ?= 1000
WIDTH_MULT  ?=
BACKEND     ?= auto
OUT         ?= build

CLI          = $(PY) -m exporter
MODEL_ARGS   = --variant $(VARIANT) --num-classes $(NUM_CLASSES) $(if $(WIDTH_MULT),--width-mult $(WIDTH_MULT))

.PHONY: setup card onnx precision engine bench test lint clean

setup: $(STAMP)

# Reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

card: $(STAMP)
	$(CLI) card $(MODEL_ARGS) --img-size $(IMG_SIZE) --out $(OUT)/$(VARIANT)

# OUT/VARIANT/model.onnx + manifest.json: fp32, dynamic batch/H/W, verified, simplified.
onnx: $(STAMP)
	$(CLI) export $(MODEL_ARGS) --img-size $(IMG_SIZE) --out $(OUT) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# model.fp16.onnx, model.int8-{trt,cpu}.onnx, engines/ort/*.ort, from OUT/VARIANT/model.onnx.
precision: $(STAMP)
	$(CLI) precision --manifest $(OUT)/$(VARIANT)/manifest.json $(if $(CALIB_DIR),--calib-dir $(CALIB_DIR))

engine: onnx
	$(MAKE) --no-print-directory precision

# bench.json: latency/throughput per runtime at batch 1 and 8, speedups over eager in one run.
bench: $(STAMP)
	$(CLI) bench --manifest $(OUT)/$(VARIANT)/manifest.json

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(OUT)
