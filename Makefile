# Attention-VGG16 export toolchain. Every target sets itself up: `make engine VARIANT=se`
# and `make test` work on a fresh machine with Python 3.11+.

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
LABELS      ?=
BENCH_ARGS  ?=
PRECISION_ARGS ?=
SELFTEST_ARGS ?=
TOLERANCES  ?=
EVAL_DIR    ?=
STRICT_ACCURACY ?=
BATCH_RANGE ?=
HEIGHT_RANGE ?=
WIDTH_RANGE ?=
OUT         ?= build

CLI          = $(VENV)/bin/attnvgg-export
# Files and folders the user names are checked before Make treats them as prerequisites (a
# missing one would read "No rule to make target"); each error names the variable and the fix.
need_file    = $(if $($(1)),$(if $(wildcard $($(1))),$(if $(wildcard $($(1))/.),$(error $(1)=$($(1)) is a folder: $(2))),$(error $(1)=$($(1)) does not exist: $(2))))
need_dir     = $(if $($(1)),$(if $(wildcard $($(1))),,$(error $(1)=$($(1)) does not exist: $(2))))
$(call need_file,CHECKPOINT,give the path of a .pt/.pth/.safetensors file or leave CHECKPOINT unset for the seeded default)
$(call need_file,LABELS,give a text file with one class name per line)
$(call need_file,KEY,give the private key (PEM) from attnvgg-export keygen)
$(call need_file,TOLERANCES,give a tolerances.toml (see docs/precision.md) or leave TOLERANCES unset)
$(call need_dir,CALIB_DIR,give a folder of images or a .npy/.npz file or leave CALIB_DIR unset for the bundled photographs)
$(call need_dir,EVAL_DIR,give a folder of labelled images (one subfolder per class) or a .npz)
$(if $(wildcard $(OUT)),$(if $(wildcard $(OUT)/.),,$(error OUT=$(OUT) is a file: name a folder (new or existing) for the builds)))
# glibc's large blocks on transparent huge pages (glibc >= 2.35; ignored where unknown): the
# precision stage's activations fault in 2 MiB at a time, not 4 KiB (docs/precision.md)
HUGE_PAGES   = GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1
D            = $(OUT)/$(VARIANT)
MODEL_ARGS   = --variant $(VARIANT) --num-classes=$(NUM_CLASSES) $(if $(WIDTH_MULT),--width-mult=$(WIDTH_MULT))
CALIB_ARGS   = $(if $(CALIB_DIR),--calib-dir $(CALIB_DIR))
PARITY_ARGS  = $(if $(TOLERANCES),--tolerances $(TOLERANCES))
EVAL_ARGS    = $(if $(EVAL_DIR),--eval-dir $(EVAL_DIR)) $(if $(STRICT_ACCURACY),--strict-accuracy)
EXPORT_ARGS  = $(MODEL_ARGS) --img-size=$(IMG_SIZE) --out $(OUT) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
               $(if $(LABELS),--labels $(LABELS)) $(if $(BATCH_RANGE),--batch=$(BATCH_RANGE)) \
               $(if $(HEIGHT_RANGE),--height=$(HEIGHT_RANGE)) $(if $(WIDTH_RANGE),--width=$(WIDTH_RANGE))

.PHONY: setup card onnx precision engine parity parity-selftest bench triton sign dist test test-slow test-isa test-arm test-cpp lint clean FORCE
.DELETE_ON_ERROR:

setup: $(STAMP)

# Reinstalled when either pyproject.toml changes. The box-side package (box/) is installed
# editable beside the toolchain, which depends on it and imports it.
$(STAMP): pyproject.toml box/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './box[onnxruntime-gpu,openvino,signing]' -e '.[dev,ray]'
	touch $@

card: $(STAMP)
	$(CLI) card $(MODEL_ARGS) --img-size=$(IMG_SIZE) --out $(D)

# The settings each stage was built with: rewritten only when they change, so that Make
# rebuilds exactly the stages that depend on a changed setting. ("+": they run under `make -n`
# too, so that a dry run lists exactly the stages a change would rebuild.)
$(D)/.settings-export: FORCE
	@+mkdir -p $(D)
	@+echo "$(EXPORT_ARGS)" | cmp -s - $@ || echo "$(EXPORT_ARGS)" > $@
$(D)/.settings-calib: FORCE
	@+mkdir -p $(D)
	@+echo "$(CALIB_DIR) $(PRECISION_ARGS)" | cmp -s - $@ || echo "$(CALIB_DIR) $(PRECISION_ARGS)" > $@
$(D)/.settings-eval: FORCE
	@+mkdir -p $(D)
	@+echo "$(EVAL_ARGS)" | cmp -s - $@ || echo "$(EVAL_ARGS)" > $@
# The backend as resolved on this machine ("auto -> ort"), not as asked: installing tensorrt
# on a GPU machine changes it, and the engines stage runs again.
$(D)/.settings-backend: $(STAMP) FORCE
	@+mkdir -p $(D)
	@+b="$(BACKEND) -> $$($(PY) -m attnvgg_export.runtime.gpu_probe $(BACKEND))"; echo "$$b" | cmp -s - $@ || echo "$$b" > $@

# Each stage depends on the code it runs (its sub-package, the readers, the manifest, and the
# parts of verify/ it measures with): a change there runs it again.
COMMON_SRC   = $(wildcard attnvgg_export/*.py attnvgg_export/manifest/* attnvgg_export/runtime/*.py box/attnvgg_runtime/*.py \
               box/attnvgg_runtime/*.json box/attnvgg_runtime/readers/*.py)
VERIFY_SRC   = $(wildcard attnvgg_export/verify/* box/attnvgg_runtime/verify/*.py attnvgg_export/calibration/*.py)

# OUT/VARIANT/model.onnx + manifest.json: fp32, dynamic batch/H/W, verified, simplified.
$(D)/.export.done: $(STAMP) $(D)/.settings-export $(CHECKPOINT) $(LABELS) $(wildcard attnvgg_export/models/*.py) \
		$(COMMON_SRC) attnvgg_export/graphs/export.py attnvgg_export/graphs/module_map.py \
		box/attnvgg_runtime/verify/measures.py attnvgg_export/verify/cases.py
	$(CLI) export $(EXPORT_ARGS)
	touch $@

# model.fp16.onnx, model.int8-{trt,cpu}.onnx, engines/ort/*.ort.
$(D)/.precision.done: $(D)/.export.done $(D)/.settings-calib $(COMMON_SRC) $(VERIFY_SRC) \
		$(wildcard attnvgg_export/graphs/*.py) attnvgg_export/convert/ort_format.py $(TOLERANCES)
	$(HUGE_PAGES) $(CLI) precision --manifest $(D)/manifest.json $(CALIB_ARGS) $(PRECISION_ARGS) $(PARITY_ARGS)
	touch $@

# engines/openvino/*.xml everywhere; engines/trt/{fp16,int8}.plan where TensorRT and a GPU exist
# (BACKEND=auto|tensorrt|ort).
$(D)/.engines.done: $(D)/.precision.done $(D)/.settings-backend $(COMMON_SRC) \
		$(wildcard attnvgg_export/convert/*.py)
	$(CLI) engines --manifest $(D)/manifest.json --backend $(BACKEND)
	touch $@

$(D)/.parity.done: $(D)/.engines.done $(D)/.settings-eval $(COMMON_SRC) $(VERIFY_SRC) \
		$(wildcard attnvgg_export/report/*.py) $(TOLERANCES) $(wildcard $(EVAL_DIR))
	$(CLI) parity --manifest $(D)/manifest.json $(PARITY_ARGS) $(EVAL_ARGS)
	touch $@

# After the gate: the speed report recommends only artifacts that passed it.
$(D)/.bench.done: $(D)/.parity.done $(COMMON_SRC) $(wildcard attnvgg_export/bench/*.py attnvgg_export/report/*.py)
	$(CLI) bench --manifest $(D)/manifest.json $(BENCH_ARGS)
	touch $@

onnx: $(D)/.export.done
precision: $(D)/.precision.done

# The whole chain; a second run with nothing changed does nothing.
engine: $(D)/.parity.done $(D)/.bench.done

# The CI gate and the speed report run on what exists, every time.
parity: $(STAMP)
	$(CLI) parity --manifest $(D)/manifest.json $(PARITY_ARGS) $(EVAL_ARGS)

# The gate proves it can fail: known bugs planted into copies of the build, each must be caught.
parity-selftest: $(STAMP)
	$(CLI) selftest --manifest $(D)/manifest.json $(SELFTEST_ARGS)

bench: $(STAMP)
	$(CLI) bench --manifest $(D)/manifest.json $(BENCH_ARGS)

# OUT/VARIANT/triton/: one Triton model per ONNX graph and plan, with its config.pbtxt.
triton: $(D)/.engines.done
	$(CLI) triton --manifest $(D)/manifest.json

# Sign the build (the manifest and every file it lists) with a private key: build.sig, which a box
# checks with `attnvgg-runtime ... --require-signature public.pem` (docs/edge.md, "Signed builds").
KEY ?=
sign: $(STAMP)
	$(if $(KEY),,$(error KEY= is unset: give the private key (PEM) to sign with; make one with .venv/bin/attnvgg-export keygen --out DIR))
	$(CLI) sign --manifest $(D)/manifest.json --key $(KEY)

# The wheels: attnvgg-runtime (the box side, torch-free: box/) and attnvgg-export (the toolchain).
# setuptools builds in the source tree: its scratch folders are removed after.
DIST ?= dist
dist: $(STAMP)
	rm -rf $(DIST)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(DIST) ./box .
	rm -rf box/build build/lib build/bdist.*
	@ls $(DIST)

lint: $(STAMP)
	$(PY) -m ruff check .

# The suite, without the tests marked slow (full-size VGG16, training the digits fixture afresh,
# whole builds driven through make (kills, rebuilds, two at once) or build() (the API docs'
# example), a local Ray cluster, the whole self-test, every bad input of docs/refuses.md):
# `make test-slow` runs those, and CI runs both.
test: lint
	$(PY) -m pytest -m "not slow and not cpp" --durations=10

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not cpp" --durations=10 -p no:cacheprovider

# The tests whose verdict depends on the CPU's kernels, again with torch (oneDNN and ATen) held
# to other instruction sets than this machine's best: a test that passes only on one CPU fails
# here first. ONNX Runtime's and OpenVINO's kernels have no such switch: they follow `cpuid`, so
# their AVX2 kernels (int8 without VNNI: saturating pair sums) run under qemu-user's emulated
# Haswell, on any x86 host: the `kernels` tests, and the parity gate on a copy of the reduced CI
# build (made natively first) with its readers emulated (box/attnvgg_runtime/readers/emulated.py); the verdict there
# is the emulated CPU's, so the build's own parity.json is left alone.
# ONEDNN_MAX_CPU_ISA:ATEN_CPU_CAPABILITY:the /proc/cpuinfo flag the level needs:the flags of
# anything above it. ATen's setting forces its kernels (an illegal instruction on a CPU without
# them), so a level above this CPU is skipped, and said so; a CPU with none of the flags above a
# level runs that level natively (`make test` did), so it is not run again; qemu below runs the
# AVX2 level of the other runtimes everywhere.
ISAS ?= AVX2:avx2:avx2:avx512f AVX512_CORE_VNNI:avx512:avx512_vnni:avx512_bf16,amx_int8
QEMU_CPU ?= Haswell
QEMU      = qemu-x86_64 -cpu $(QEMU_CPU),-pcid,-x2apic,-tsc-deadline,-hle,-rtm,-invpcid
CI_BUILD  = VARIANT=se WIDTH_MULT=0.125 NUM_CLASSES=10 OUT=build/ci
EMULATED  = build/ci-$(QEMU_CPU)/se
# what the emulated gate reads (each kernel runs ~40x slower there): every int8 artifact, on the
# first 32 held-out images at the opt size (half of them: the AMX Xeon spent 10 of its 57 CI
# minutes here)
EMULATED_IMAGES ?= 32
INT8_ARTIFACTS = model.int8-trt.onnx model.int8-cpu.onnx engines/ort/model.int8-cpu.ort \
                 engines/openvino/model.int8.xml
test-isa: $(STAMP)
	@for isa in $(ISAS); do \
		onednn=$${isa%%:*}; rest=$${isa#*:}; aten=$${rest%%:*}; rest=$${rest#*:}; \
		flag=$${rest%%:*}; above=$${rest#*:}; \
		if ! grep -qw "$$flag" /proc/cpuinfo; then \
			echo "== NOT run: pytest -m numerics at $$onednn (this CPU has no $$flag)"; continue; fi; \
		if ! grep -m1 '^flags' /proc/cpuinfo | grep -qwE "$$(echo $$above | tr , '|')"; then \
			echo "== NOT run again: pytest -m numerics at $$onednn (this CPU's own level: make test runs it)"; continue; fi; \
		echo "== pytest -m numerics with ONEDNN_MAX_CPU_ISA=$$onednn ATEN_CPU_CAPABILITY=$$aten"; \
		ONEDNN_MAX_CPU_ISA=$$onednn ATEN_CPU_CAPABILITY=$$aten MKL_ENABLE_INSTRUCTIONS=$${onednn%%_*} $(PY) -m pytest -m numerics -q -p no:cacheprovider || exit 1; \
	done
	@command -v qemu-x86_64 >/dev/null || { echo "installing qemu-user (Debian) for ONNX Runtime's and OpenVINO's AVX2 kernels"; \
		apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null; }
	$(MAKE) --no-print-directory engine $(CI_BUILD)
	rm -rf $(EMULATED) && mkdir -p $(dir $(EMULATED)) && cp -r build/ci/se $(EMULATED)
	@echo "== under qemu -cpu $(QEMU_CPU): pytest -m kernels, then the parity gate on $(EMULATED)"
	ATTNVGG_QEMU_CPU=$(QEMU_CPU) ATTNVGG_KERNELS_BUILD=$(EMULATED)/manifest.json \
		$(QEMU) $(PY) -m pytest -m kernels -q -p no:cacheprovider
	ATTNVGG_EMULATE_CPU=$(QEMU_CPU) $(CLI) parity --manifest $(EMULATED)/manifest.json \
		--artifacts $(INT8_ARTIFACTS) --cases --images $(EMULATED_IMAGES)

# The C++ consumer (examples/cpp) built from a clean clone with OpenVINO's C++ API from its pip wheel
# and stb's headers from Debian's libstb-dev (downloaded, unpacked under build/cpp: no root needed;
# /usr/include/stb is used where it is installed), then checked on the CI build's golden images
# against Python's OpenVINO and eager PyTorch, and against a planted bug (tests/cpp).
CPP_DIR   = build/cpp
STB_INCLUDE = $(if $(wildcard /usr/include/stb/stb_image.h),/usr/include,$(CPP_DIR)/stb/usr/include)
$(CPP_DIR)/stb/usr/include/stb/stb_image.h:
	rm -rf $(CPP_DIR)/stb $(CPP_DIR)/deb && mkdir -p $(CPP_DIR)/deb
	cd $(CPP_DIR)/deb && apt-get download libstb-dev
	dpkg-deb -x $(CPP_DIR)/deb/libstb-dev_*.deb $(CPP_DIR)/stb
test-cpp: $(STAMP) $(STB_INCLUDE)/stb/stb_image.h
	$(MAKE) --no-print-directory engine $(CI_BUILD)
	$(MAKE) --no-print-directory -C examples/cpp OUT=$(abspath $(CPP_DIR)) STB_INCLUDE=$(abspath $(STB_INCLUDE)) \
		OPENVINO="$$($(PY) -c 'import openvino, os; print(os.path.dirname(openvino.__file__))')"
	ATTNVGG_CPP_BINARY=$(CPP_DIR)/attnvgg-classify ATTNVGG_CPP_BUILD=build/ci/se \
		$(PY) -m pytest -m cpp tests/cpp -p no:cacheprovider

# The runtime wheel on an emulated aarch64 box (qemu-aarch64 10, Debian's arm64 python3.11, aarch64
# wheels; all cached under build/arm): installed by the box's own pip, then probe, verify on a copy
# of the reduced CI build (restricted to fit CI: ARM_VERIFY; signed with a key made for the run,
# and verified with --require-signature), classify one photograph, and a planted int8 bug that
# verify must fail; FULL_BUILD's signature, and a copy of it with one altered byte refused.
# ARM_CPU=cortex-a72: a core without dotprod or fp16.
ARM_CPU    ?= neoverse-n1
# a full-size build to sign and to check the signature of on the box (CI: build/se)
FULL_BUILD ?=
ARM_VERIFY ?= --case heldout --images 8 --reader onnxruntime \
              --artifact model.onnx,model.int8-cpu.onnx,engines/ort/*
test-arm: $(STAMP)
	$(MAKE) --no-print-directory engine $(CI_BUILD)
	$(MAKE) --no-print-directory dist DIST=build/arm/dist
	ARM_CPU=$(ARM_CPU) ARM_VERIFY="$(ARM_VERIFY)" FULL_BUILD=$(FULL_BUILD) tests/arm/test_arm.sh build/ci/se build/arm/dist \
		"$$($(PY) -c 'import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / "data" / "chelsea.png")')"

clean:
	rm -rf $(OUT)

FORCE:
