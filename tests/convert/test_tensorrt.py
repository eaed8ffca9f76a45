"""The TensorRT step: against a test double here; for real on a GPU (marked, skipped here)."""

import sys

import numpy as np
import pytest

from attnvgg_export.convert import tensorrt_plan as plan
from attnvgg_runtime.manifest import Manifest
from attnvgg_runtime.readers import tensorrt as te

from .fake_tensorrt import FakeTensorRT, HostBuffers

DYNAMIC = {"batch": {"min": 1, "opt": 1, "max": 32},
           "height": {"min": 32, "opt": 224, "max": 448, "multiple_of": 32},
           "width": {"min": 32, "opt": 224, "max": 448, "multiple_of": 32}}


@pytest.fixture
def fake_trt(monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def test_importing_the_exporter_does_not_need_tensorrt():
    import subprocess

    code = ("import sys; sys.modules['tensorrt'] = None\n"  # any `import tensorrt` now fails
            "import attnvgg_export.cli, attnvgg_export.convert.engines, "
            "attnvgg_export.convert.tensorrt_plan, "
            "attnvgg_runtime.readers.tensorrt, attnvgg_export.verify.gate, attnvgg_export.bench.bench, "
            "attnvgg_export.convert.triton\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_missing_tensorrt_is_a_clear_error_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(te.TensorRTUnavailable, match=r"not installed.*pip install -e '\.\[tensorrt\]'"):
        te.import_tensorrt()
    with pytest.raises(te.TensorRTUnavailable, match="BACKEND=tensorrt, but"):
        plan.resolve_backend("tensorrt")
    backend, why = plan.resolve_backend("auto")
    assert backend == "ort" and "ONNX Runtime on the CPU, because" in why


def test_tensorrt_10_is_refused(monkeypatch):
    fake = FakeTensorRT()
    fake.__version__ = "10.13.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(te.TensorRTUnavailable, match="needs TensorRT 11"):
        te.import_tensorrt()


def test_auto_without_a_gpu_falls_back_to_ort(fake_trt, monkeypatch):
    monkeypatch.setattr(plan, "gpu_status", lambda: (False, "no NVIDIA GPU visible"))
    assert plan.resolve_backend("auto")[0] == "ort"
    with pytest.raises(te.TensorRTUnavailable, match="no NVIDIA GPU"):
        plan.resolve_backend("tensorrt")
    monkeypatch.setattr(plan, "gpu_status", lambda: (True, "NVIDIA H100"))
    assert plan.resolve_backend("auto") == ("tensorrt", "BACKEND=auto: TensorRT 11.4.0 on NVIDIA H100")


def test_build_is_strongly_typed_with_the_manifest_profile_and_a_timing_cache(fake_trt, tmp_path):
    onnx_path = tmp_path / "model.int8-trt.onnx"
    onnx_path.write_bytes(b"onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"previous")
    config = plan.EngineConfig(workspace_bytes=1 << 30, timing_cache=cache)
    report = plan.onnx_to_plan(onnx_path, tmp_path / "engines" / "int8.plan", DYNAMIC, config)
    calls = fake_trt.calls
    assert ("create_network", 0) in calls
    assert ("set_shape", "input", (1, 3, 32, 32), (1, 3, 224, 224), (32, 3, 448, 448)) in calls
    assert ("create_timing_cache", b"previous") in calls  # read before the build
    assert cache.read_bytes() == b"previous+timed"  # written after it
    assert ("set_memory_pool_limit", fake_trt.MemoryPoolType.WORKSPACE, 1 << 30) in calls
    assert not any(c[0] == "set_flag" for c in calls)  # no precision flags exist in TensorRT 11
    build = next(c for c in calls if c[0] == "build_serialized_network")
    assert build[1] is fake_trt.ProfilingVerbosity.DETAILED  # needed for the inspector JSON
    assert report.plan.read_bytes() == b"PLAN:" + str(onnx_path).encode()  # plain plan, no header
    assert "conv1" in report.layers.read_text()
    assert report.tensorrt_version == "11.4.0"


def test_timing_cache_is_shared_between_builds(fake_trt, tmp_path):
    cache = tmp_path / "timing.cache"
    for name in ("fp16", "int8"):
        (tmp_path / f"{name}.onnx").write_bytes(b"onnx")
        plan.onnx_to_plan(tmp_path / f"{name}.onnx", tmp_path / f"{name}.plan", DYNAMIC,
                        plan.EngineConfig(timing_cache=cache))
    created = [c[1] for c in fake_trt.calls if c[0] == "create_timing_cache"]
    assert created == [b"", b"+timed"]  # the second build starts from the first one's cache


def test_compatibility_options(fake_trt, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    plan.onnx_to_plan(tmp_path / "m.onnx", tmp_path / "m.plan", DYNAMIC,
                    plan.EngineConfig(hardware_compatible=True, version_compatible=True))
    build = next(c for c in fake_trt.calls if c[0] == "build_serialized_network")
    assert build[2] is fake_trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert ("set_flag", fake_trt.BuilderFlag.VERSION_COMPATIBLE) in fake_trt.calls


def test_parser_errors_name_the_node_and_op_and_write_nothing(fake_trt, tmp_path):
    fake_trt.parser_errors = [("node_Range_12", "Range", "unsupported datatype INT64 in input")]
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(plan.EngineBuildError, match=r"node node_Range_12 \(Range\): unsupported"):
        plan.onnx_to_plan(tmp_path / "m.onnx", tmp_path / "m.plan", DYNAMIC, plan.EngineConfig())
    assert not (tmp_path / "m.plan").exists()


def test_plan_for_another_gpu_fails_to_load_with_the_reason(fake_trt, tmp_path):
    fake_trt.loadable = False
    (tmp_path / "m.plan").write_bytes(b"PLAN:x")
    with pytest.raises(te.EngineLoadError, match=r"incompatible device.*rebuild with `make engine`"):
        te.TensorRTRunner(tmp_path / "m.plan", buffers=HostBuffers())


def test_runner_sets_shapes_and_addresses_and_runs_on_its_own_stream(fake_trt, tmp_path):
    (tmp_path / "m.plan").write_bytes(b"PLAN:x")
    buffers = HostBuffers()
    runner = te.TensorRTRunner(tmp_path / "m.plan", buffers=buffers)
    for shape in [(1, 3, 224, 224), (3, 3, 96, 160)]:
        x = np.random.default_rng(len(shape)).standard_normal(shape, dtype=np.float32)
        out = runner(x)
        expected = x.mean(axis=(1, 2, 3))[:, None] + np.arange(10)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        assert ("set_input_shape", "input", shape) in fake_trt.calls
    names = fake_trt.call_names()
    assert names.count("set_tensor_address") == 4 and names.count("execute_async_v3") == 2
    streams = {c[1] for c in fake_trt.calls if c[0] == "execute_async_v3"}
    assert streams == {HostBuffers.stream_handle}  # its own stream, never the legacy default 0
    assert buffers.synchronized == 2  # results are read only after the stream finished


def test_version_compatible_plans_load_only_with_host_code_allowed(fake_trt, tmp_path):
    fake_trt.version_compatible_plans = True
    (tmp_path / "m.plan").write_bytes(b"PLAN:x")
    with pytest.raises(te.EngineLoadError, match="host code is not allowed.*embeds host code"):
        te.TensorRTRunner(tmp_path / "m.plan", buffers=HostBuffers())
    runner = te.TensorRTRunner(tmp_path / "m.plan", host_code_allowed=True, buffers=HostBuffers())
    assert runner.input == "input"
    (tmp_path / "m.onnx").write_bytes(b"onnx")  # the build inspects its own plan: allowed there
    plan.onnx_to_plan(tmp_path / "m.onnx", tmp_path / "vc.plan", DYNAMIC,
                    plan.EngineConfig(version_compatible=True))
    assert [c[2] for c in fake_trt.calls if c[0] == "deserialize_cuda_engine"][-1] is True


def test_runner_without_a_gpu_is_unavailable_not_broken(fake_trt, tmp_path, monkeypatch):
    monkeypatch.setattr(te, "gpu_status", lambda: (False, "no NVIDIA GPU visible to CUDA"))
    (tmp_path / "m.plan").write_bytes(b"PLAN:x")
    with pytest.raises(te.TensorRTUnavailable, match="cannot run m.plan: no NVIDIA GPU"):
        te.TensorRTRunner(tmp_path / "m.plan")


def test_shape_outside_the_profile_is_refused(fake_trt, tmp_path):
    (tmp_path / "m.plan").write_bytes(b"PLAN:x")
    runner = te.TensorRTRunner(tmp_path / "m.plan", buffers=HostBuffers())
    runner.check_shape((8, 3, 224, 320))
    with pytest.raises(te.ShapeOutsideProfileError, match=r"\(64, 3, 224, 224\) is outside"):
        runner(np.zeros((64, 3, 224, 224), np.float32))
    with pytest.raises(te.ShapeOutsideProfileError, match="outside"):
        runner.check_shape((1, 3, 480, 224))


def _require_tensorrt_gpu():
    try:
        te.import_tensorrt()
    except te.TensorRTUnavailable as e:
        pytest.skip(f"needs tensorrt 11: {e}")
    has_gpu, why = te.gpu_status()
    if not has_gpu:
        pytest.skip(f"needs an NVIDIA GPU: {why}")


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_builds_runs_and_matches_eager(exported, precision, tmp_path):
    """On a GPU machine: build from the precision graph, run at several shapes, compare."""
    _require_tensorrt_gpu()
    import json

    from attnvgg_export.calibration.calibrate import calibrate
    from attnvgg_export.calibration.data import ImageSet
    from attnvgg_export.graphs.fp16 import onnx_to_fp16
    from attnvgg_export.graphs.quantize import Int8Target, onnx_to_int8
    from attnvgg_export.runtime.eager import model_from_manifest, run_torch
    from attnvgg_runtime.verify.measures import compare

    manifest_path = exported("se")
    manifest = json.loads(manifest_path.read_text())
    fp32 = manifest_path.parent / "model.onnx"
    if precision == "fp16":
        graph = onnx_to_fp16(fp32, tmp_path / "model.fp16.onnx")
    else:
        images = ImageSet(np.random.default_rng(0).standard_normal((16, 3, 224, 224), np.float32),
                          None, "noise")
        graph = onnx_to_int8(fp32, tmp_path / "model.int8-trt.onnx",
                             calibrate(fp32, images, tmp_path / "calib", "minmax"), Int8Target.TENSORRT)
    report = plan.onnx_to_plan(graph, tmp_path / f"{precision}.plan", manifest["dynamic"],
                             plan.EngineConfig(timing_cache=tmp_path / "timing.cache"))
    runner = te.TensorRTRunner(report.plan)
    model = model_from_manifest(Manifest.from_json(manifest))
    for shape in [(1, 3, 224, 224), (4, 3, 96, 160), (2, 3, 448, 448)]:
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        result = compare(runner(x), run_torch(model, x), shape, 1e-2 if precision == "fp16" else 0.2)
        assert result.finite and result.cosine > (0.999 if precision == "fp16" else 0.98), result.describe()


def test_engines_stage_adds_plans_to_the_manifest(fake_trt, monkeypatch, precision_build, tmp_path):
    import json
    import shutil
    import socket

    from attnvgg_export.convert.engines import build_engines

    root = tmp_path / "se"
    shutil.copytree(precision_build, root)
    monkeypatch.setattr(plan, "gpu_status", lambda: (True, "NVIDIA H100"))
    monkeypatch.setattr(plan, "gpu_identity", lambda: ("NVIDIA H100", "9.0"))
    build_engines(root / "manifest.json", "auto", log=lambda *_: None)
    manifest = json.loads((root / "manifest.json").read_text())
    plans = {a["path"]: a for a in manifest["artifacts"] if a["format"] == "plan"}
    assert set(plans) == {"engines/trt/fp16.plan", "engines/trt/int8.plan"}
    assert plans["engines/trt/int8.plan"]["precision"] == "int8"
    assert all(p["target"] == "tensorrt" for p in plans.values())
    assert manifest["tensorrt"] == {"version": "11.4.0", "gpu": "NVIDIA H100", "compute_capability": "9.0",
                                    "version_compatible": False, "host": socket.gethostname()}
    assert manifest["backend"]["used"] == "tensorrt"
    parsed = [c[1] for c in fake_trt.calls if c[0] == "parse_from_file"]
    assert [p.rsplit("/", 1)[-1] for p in parsed] == ["model.fp16.onnx", "model.int8-trt.onnx"]
    # each plan's profile is what its verdict covers: fp16 the declared range, int8 from 64 px
    profiles = [c[2:] for c in fake_trt.calls if c[0] == "set_shape"]
    d = manifest["dynamic"]
    top = (d["batch"]["max"], 3, d["height"]["max"], d["width"]["max"])
    assert profiles == [((1, 3, 32, 32), (1, 3, 224, 224), top), ((1, 3, 64, 64), (1, 3, 224, 224), top)]
    assert plans["engines/trt/int8.plan"]["min_side"] == 64
    assert "min_side" not in plans["engines/trt/fp16.plan"]
    assert plans["engines/trt/int8.plan"]["source"] == "model.int8-trt.onnx"
    assert (root / "engines/trt/timing.cache").is_file()


def test_engines_stage_without_tensorrt_records_the_cpu_backend(monkeypatch, precision_build, tmp_path):
    import json
    import shutil

    from attnvgg_export.convert.engines import build_engines

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    root = tmp_path / "se"
    shutil.copytree(precision_build, root)
    lines = []
    build_engines(root / "manifest.json", "auto", log=lines.append)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["backend"]["used"] == "ort" and "not installed" in lines[0]
    assert not any(a["format"] == "plan" for a in manifest["artifacts"])
    with pytest.raises(te.TensorRTUnavailable, match="BACKEND=tensorrt, but"):
        build_engines(root / "manifest.json", "tensorrt", log=lambda *_: None)


def test_build_interrupted_mid_way_leaves_no_plan(fake_trt, tmp_path, monkeypatch):
    def interrupted(self, network, config):
        raise KeyboardInterrupt  # the process killed while TensorRT builds

    monkeypatch.setattr(fake_trt.Builder, "build_serialized_network", interrupted)
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        plan.onnx_to_plan(tmp_path / "m.onnx", tmp_path / "m.plan", DYNAMIC,
                        plan.EngineConfig(timing_cache=cache))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "timing.cache"]
    assert cache.read_bytes() == b"previous"  # the shared cache is not half-written either


def test_the_backend_stamp_follows_what_auto_would_choose(monkeypatch):
    """Make's .settings-backend holds this: when tensorrt and a GPU appear, `make engine`
    builds the plans instead of keeping the CPU-only build."""
    import importlib.util
    import os

    from attnvgg_export.runtime import gpu_probe

    assert gpu_probe.probable_backend("ort") == "ort"
    assert gpu_probe.probable_backend("tensorrt") == "tensorrt"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    assert gpu_probe.probable_backend("auto") == "ort"  # tensorrt, but no driver
    monkeypatch.setattr(os.path, "exists", lambda path: path in gpu_probe.NVIDIA_DRIVER_FILES)
    assert gpu_probe.probable_backend("auto") == "tensorrt"
