"""The box side as a box gets it: `make dist`'s runtime wheel, installed by pip with its
[onnxruntime] extra into a new venv where torch is not installed, classifies an image and
verifies the reduced build with its console command; verify exits 1 on a planted int8 bug and
names the artifact. (`make test-arm` does the same on an emulated aarch64 box.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnvgg_export.verify.selftest import write_planted_copy
from tests.conftest import copy_build

ROOT = Path(__file__).resolve().parents[1]
# the runtime wheel's dependencies for this platform, downloaded once per checkout (pip reuses
# what is there); the venv then installs from it and the wheel alone, with no index
WHEELHOUSE = ROOT / "build" / "box-wheelhouse"
PHOTO = "chelsea.png"  # scikit-image's bundled photograph (the toolchain's calibration source)


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def box_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("box")
    made = _run("make", "--no-print-directory", "dist", f"DIST={tmp / 'dist'}", cwd=ROOT, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    wheel = next((tmp / "dist").glob("attnvgg_runtime-*.whl"))
    for stale in WHEELHOUSE.glob("attnvgg_runtime-*.whl"):  # pip would resolve this version from it
        stale.unlink()
    fetched = _run(sys.executable, "-m", "pip", "download", "-q", "-d", WHEELHOUSE, f"{wheel}[onnxruntime]",
                   timeout=1200)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    venv = tmp / "venv"
    assert _run(sys.executable, "-m", "venv", venv, timeout=300).returncode == 0
    installed = _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
                     "--find-links", WHEELHOUSE, f"{wheel}[onnxruntime]", timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


def _box(venv: Path, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / "attnvgg-runtime"), *map(str, args)], capture_output=True,
                          text=True, timeout=900, env=env, cwd=cwd or venv)


def test_the_runtime_wheel_installs_without_torch(box_venv):
    python = str(box_venv / "bin" / "python")
    no_torch = _run(python, "-c", "import torch", cwd=box_venv, timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    listed = _run(python, "-m", "pip", "list", "--format=json", timeout=120)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"attnvgg-runtime", "numpy", "pillow"} <= names
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names  # a CPU box's runtime
    assert not names & {"torch", "torchvision", "onnx", "attnvgg-export"}, names
    probe = _box(box_venv, "probe")
    assert probe.returncode == 0 and "int8 pair sums" in probe.stdout, probe.stderr


def test_classify_and_verify_run_from_the_wheel_and_verify_names_a_planted_int8_bug(
        box_venv, gated_build, tmp_path):
    import skimage

    build = copy_build(gated_build, tmp_path)
    photo = Path(skimage.__file__).parent / "data" / PHOTO
    classified = _box(box_venv, "classify", build / "manifest.json", photo, "--runtime", "onnxruntime")
    assert classified.returncode == 0, classified.stderr
    assert classified.stdout.startswith(f"{photo}: ") and classified.stdout.count(", ") == 4
    # what ran, and why, on stderr
    assert "running " in classified.stderr and "under onnxruntime" in classified.stderr

    verified = _box(box_venv, "verify", build / "manifest.json", "--case", "heldout")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-2000:]
    assert "RESTRICTED to cases heldout" in verified.stdout
    report = json.loads((build / "verify.json").read_text())["latest"]
    assert report["passed"] and report["restricted"] == {"cases": ["heldout"], "artifacts": None,
                                                         "readers": None, "images": None}

    planted = write_planted_copy(build / "manifest.json", "int8 activation range clipped",
                                 tmp_path / "planted", log=lambda *_: None)
    caught = _box(box_venv, "verify", planted, "--case", "heldout", "--artifact", "model.int8-cpu.onnx")
    assert caught.returncode == 1, caught.stdout[-3000:] + caught.stderr[-2000:]
    assert "model.int8-cpu.onnx [onnxruntime" in caught.stdout and "FAIL" in caught.stdout
    failed = {r["path"] for r in json.loads((planted.parent / "verify.json").read_text())["results"]
              if not r["passed"] and r["unread"] is None}
    assert failed == {"model.int8-cpu.onnx"}
