"""A build that survives faults: kills, concurrent builds, re-runs, full or read-only disks.

These drive `make` the way users and CI do, on reduced-width models at small sizes."""

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from attnvgg_export import models
from attnvgg_export.graphs.export import export_to_folder
from attnvgg_runtime.files import OutputError
from attnvgg_runtime.manifest import read_manifest, sha256_file, verify_artifacts
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
# Reduced width, a small declared range, few calibration images and a short bench: these tests
# are about what make does with files, not about numerics, and each runs several builds (the
# README's full-size build runs in CI).
TINY = ["WIDTH_MULT=0.125", "NUM_CLASSES=10", "IMG_SIZE=64", "BATCH_RANGE=1,1,4",
        "HEIGHT_RANGE=32,64,128", "WIDTH_RANGE=32,64,128",
        "PRECISION_ARGS=--calib-count 24 --tuning-count 8 --heldout-count 8",
        "BENCH_ARGS=--seconds 0.2 --no-compile --batches 1"]


def photo_crops(count: int, size: int) -> np.ndarray:
    """uint8 (N, size, size, 3) crops of a bundled photograph: a CALIB_DIR of real pixels."""
    import importlib.resources

    from PIL import Image

    photo = np.asarray(Image.open(importlib.resources.files("skimage") / "data" / "astronaut.png"))
    rng = np.random.default_rng(0)
    corners = rng.integers(0, photo.shape[0] - size, (count, 2))
    return np.stack([photo[y:y + size, x:x + size, :3] for y, x in corners])


def make(out: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "-C", str(REPO), *TINY, *args, f"OUT={out}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def stages_run(result: subprocess.CompletedProcess) -> list[str]:
    """Which `attnvgg-export <stage>` commands make ran."""
    return [line.split("attnvgg-export ")[1].split()[0] for line in result.stdout.splitlines()
            if "attnvgg-export " in line]


def finished_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.endswith(".partial") and not p.name.startswith("."))


def kill_when(out: Path, args: list[str], ready, timeout: float = 300) -> None:
    """Run make; SIGKILL its whole process group once ready(log_text) is true."""
    command = ["make", "--no-print-directory", "-C", str(REPO), *args, *TINY, f"OUT={out}"]
    log = out / "build.log"
    # a killed process cannot remove its temporary files (calibration's augmented graph): they go
    # in the test's folder, not the machine's /tmp
    scratch = out / "tmp"
    scratch.mkdir(exist_ok=True)
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + timeout
    try:
        while not ready(log.read_text()):
            assert process.poll() is None, "the build ended before the point to kill it"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow  # whole builds through make: `make test-slow`, in CI
def test_killed_during_export_leaves_nothing_finished_and_the_next_run_completes(tmp_path):
    folder = tmp_path / "se"
    kill_when(tmp_path, ["engine", "VARIANT=se"],
              lambda _: any(p.stat().st_size > 0 for p in folder.glob(".model.raw.onnx.partial")))
    assert [f for f in finished_files(folder) if f != "build.log"] == []  # nothing looks finished
    result = make(tmp_path, "onnx", "VARIANT=se")  # the stage that was killed, again (the whole
    assert result.returncode == 0, result.stderr[-2000:]  # chain: test_rebuilds_only_what_changed)
    assert stages_run(result) == ["export"] and (folder / ".export.done").exists()
    verify_artifacts(folder / "manifest.json")
    assert not list(folder.glob(".*.partial"))


@pytest.mark.slow  # whole builds through make: `make test-slow`, in CI
def test_killed_during_calibration_then_completes(tmp_path):
    folder = tmp_path / "se"
    assert make(tmp_path, "onnx", "VARIANT=se").returncode == 0
    before = finished_files(folder)
    kill_when(tmp_path, ["engine", "VARIANT=se"], lambda log: "calibrating (" in log)
    after = finished_files(folder)
    assert not any(name.startswith("model.int8") for name in after)
    assert not (folder / ".precision.done").exists()
    assert set(before) <= set(after)
    verify_artifacts(folder / "manifest.json")  # the manifest still describes finished files
    result = make(tmp_path, "precision", "VARIANT=se")
    assert result.returncode == 0, result.stderr[-2000:]
    assert stages_run(result) == ["precision"]  # export was not redone
    assert {a.path for a in read_manifest(folder / "manifest.json").artifacts} >= {
        "model.int8-trt.onnx", "model.int8-cpu.onnx"}


@pytest.mark.slow  # whole builds through make: `make test-slow`, in CI
def test_rebuilds_only_what_changed(tmp_path):
    # This test is about what make rebuilds, not about accuracy. The checkpoints here hold random
    # weights: top-1 agreement on their flat logits is noise, so this build's budgets (merged
    # over the defaults) switch it off (the gate applies it to any checkpoint by default); and
    # 24 calibration images give int8 ranges noisier than the 256 of a real build (seen: rel L2
    # 0.128 and per-image cosine 0.974 at 4x3x448x32 under OpenVINO; 0.10 and 0.993 with 256
    # images), so int8 gets a wider budget.
    budgets = tmp_path / "tolerances.toml"
    budgets.write_text("".join(f"[precision.{p}]\ntop1_min = 0.0\ntop5_min = 0.0\n"
                               for p in ("fp32", "fp16", "bf16", "int8"))
                       + "rel_l2_max = 0.2\ncosine_min = 0.95\n")
    checkpoint = tmp_path / "se.pt"

    def build(*settings, target="engine"):  # random weights: the fallback compares by cosine
        precision_args = next(a for a in TINY if a.startswith("PRECISION_ARGS="))
        return make(tmp_path, target, "VARIANT=se", f"TOLERANCES={budgets}",
                    f"{precision_args} --metric cosine", *settings)

    torch.manual_seed(3)
    models.save_checkpoint(models.create_model("se", num_classes=10, width=0.125), checkpoint,
                           "se", 10, 0.125)
    first = build(f"CHECKPOINT={checkpoint}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert stages_run(first) == ["export", "precision", "engines", "parity", "bench"]
    again = build(f"CHECKPOINT={checkpoint}")
    assert again.returncode == 0 and stages_run(again) == []
    assert (tmp_path / "se" / ".settings-backend").read_text().strip() == "auto -> ort"

    # What a change rebuilds, seen by a dry run (the settings stamps run under `make -n` too);
    # the real rebuild after a new checkpoint then shows the stages read what changed.
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=photo_crops(40, 256))
    new_data = build("-n", f"CHECKPOINT={checkpoint}", f"CALIB_DIR={calib}")
    assert new_data.returncode == 0, new_data.stderr[-2000:]
    assert stages_run(new_data) == ["precision", "engines", "parity", "bench"]

    time.sleep(1.1)  # a new checkpoint, same path: everything after it is rebuilt
    torch.manual_seed(4)
    models.save_checkpoint(models.create_model("se", num_classes=10, width=0.125), checkpoint,
                           "se", 10, 0.125)
    assert stages_run(build("-n", f"CHECKPOINT={checkpoint}", f"CALIB_DIR={calib}")) == [
        "export", "precision", "engines", "parity", "bench"]
    # the stages that read the new checkpoint and data, for real (the rest of the chain ran
    # for real in the first build)
    new_weights = build(f"CHECKPOINT={checkpoint}", f"CALIB_DIR={calib}", target="precision")
    assert new_weights.returncode == 0, new_weights.stderr[-2000:]
    assert stages_run(new_weights) == ["export", "precision"]
    manifest = read_manifest(tmp_path / "se" / "manifest.json")
    assert manifest.model["checkpoint_sha256"] == sha256_file(checkpoint)
    assert manifest.data_split["source"] == str(calib)


@pytest.mark.slow  # whole builds through make: `make test-slow`, in CI
def test_two_variants_built_at_once_do_not_clash(tmp_path):
    """Export and precision, the stages that write the big files, of two variants at once."""
    processes = [subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(REPO), *TINY, "precision", f"VARIANT={variant}",
         f"OUT={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for variant in ("se", "vgg16")]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[-2000:] for o in outputs]
    for variant in ("se", "vgg16"):
        verify_artifacts(tmp_path / variant / "manifest.json")
        manifest = read_manifest(tmp_path / variant / "manifest.json")
        # fp32, fp16, two int8 graphs, the camera-frame graph, two .ort files
        assert manifest.variant == variant and len(manifest.artifacts) == 7


def test_full_disk_is_a_clear_error_and_previous_artifacts_stay_intact(tmp_path, monkeypatch):
    folder = tmp_path / "vgg16"
    export_to_folder(tiny_config("vgg16"), folder, log=lambda *_: None)
    before = {name: sha256_file(folder / name) for name in ("model.onnx", "manifest.json")}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save_model", disk_full)
    with pytest.raises(OutputError, match="No space left on device.*check free space"):
        export_to_folder(tiny_config("vgg16"), folder, log=lambda *_: None)
    assert {name: sha256_file(folder / name) for name in before} == before
    assert finished_files(folder) == ["manifest.json", "model.onnx"]


def test_read_only_output_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match="cannot create output folder /sys/attnvgg"):
        export_to_folder(tiny_config("vgg16"), Path("/sys/attnvgg/vgg16"), log=lambda *_: None)
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access  # root writes anywhere: show the check what a user would see
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == folder else real_access(p, m))
    with pytest.raises(OutputError, match="ro is not writable"):
        export_to_folder(tiny_config("vgg16"), folder, log=lambda *_: None)
    assert list(folder.iterdir()) == []


def test_export_stage_removes_partials_left_by_a_killed_run(tmp_path):
    folder = tmp_path / "vgg16"
    folder.mkdir()
    (folder / ".model.raw.onnx.partial").write_bytes(b"half a graph")
    export_to_folder(tiny_config("vgg16"), folder, log=lambda *_: None)
    assert not list(folder.glob(".*.partial"))
