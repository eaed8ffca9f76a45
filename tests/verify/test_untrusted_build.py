"""The box trusts nothing outside its build folder: every path a manifest names resolves inside it,
what is hashed is what is loaded, host code in a plan runs only when the person running the box
asks, and bad flags or unreadable files are errors (exit 2), never a pass, a traceback or an
overwritten record."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnvgg_runtime import cli
from attnvgg_runtime.files import sha256_file
from attnvgg_runtime.manifest import Manifest, ManifestError, OutsideBuild, read_manifest, write_manifest
from tests.conftest import copy_build

# the box's command under an audit hook that records every file it opens whose name holds CANARY
AUDITED = ("import runpy, sys\n"
           "for name in ('torch', 'torchvision'): sys.modules[name] = None\n"
           "opened = []\n"
           "def hook(event, args):\n"
           "    if event == 'open' and isinstance(args[0], (str, bytes)) and 'CANARY' in str(args[0]):\n"
           "        opened.append(str(args[0]))\n"
           "sys.addaudithook(hook)\n"
           "sys.argv = ['attnvgg-runtime', *sys.argv[1:]]\n"
           "try:\n"
           "    runpy.run_module('attnvgg_runtime', run_name='__main__')\n"
           "finally:\n"
           "    print('OPENED:' + repr(opened), file=sys.stderr)\n")
IR = "engines/openvino/model.fp32.xml"


def _box(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", AUDITED, *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _edit(root: Path, change) -> None:
    """Edit manifest.json as JSON (no validation: what an attacker writes)."""
    data = json.loads((root / "manifest.json").read_text())
    change(data)
    (root / "manifest.json").write_text(json.dumps(data))


def _point_at(data: dict, artifact: str, path: str, sha256: str) -> None:
    entry = next(a for a in data["artifacts"] if a["path"] == artifact)
    entry["path"], entry["sha256"] = path, sha256


@pytest.fixture
def build(gated_build, tmp_path):
    """A copy of the gated build in its own folder, and CANARY copies of its fp32 ONNX Runtime
    models outside it (the same bytes, so the manifest's sha256 of them would match)."""
    root = copy_build(gated_build, tmp_path / "box")
    for name in ("model.onnx", "engines/ort/model.fp32.ort"):
        shutil.copy(root / name, tmp_path / f"CANARY-{Path(name).name}")
    return root, tmp_path


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
@pytest.mark.parametrize("command", ["verify", "bench", "classify"])
def test_no_command_opens_a_file_the_manifest_names_outside_the_build(build, how, command):
    root, outside = build
    artifact = "engines/ort/model.fp32.ort" if command == "classify" else "model.onnx"  # what it runs
    canary = outside / f"CANARY-{Path(artifact).name}"
    if how == "symlink":  # a file inside the folder that leads out of it
        (root / "CANARY-link").symlink_to(canary)
        path = "CANARY-link"
    else:
        path = os.path.relpath(canary, root) if how == "relative" else str(canary)
    _edit(root, lambda d: _point_at(d, artifact, path, sha256_file(canary)))
    args = {"verify": ["--case", "heldout", "--images", "1"],
            "bench": ["--seconds", "0.1", "--no-first-result"],
            "classify": ["--precision", "fp32", "--runtime", "onnxruntime", "--allow-unverified"]}
    images = [str(Path(__file__).parents[1] / "assets" / "digits-se.json")] if command == "classify" else []
    result = _box(command, str(root / "manifest.json"), *images, *args[command], cwd=root)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert ("outside the build folder" in result.stderr if how == "symlink"
            else "not a plain path inside the build folder" in result.stderr), result.stderr
    assert path in result.stderr  # the path is named
    assert result.stderr.strip().endswith("OPENED:[]"), result.stderr  # and never opened


def test_a_golden_file_outside_the_build_is_refused(build):
    root, canary = build
    _edit(root, lambda d: d["golden"]["inputs"].update(path="../../../../../../../../etc/passwd"))
    result = _box("verify", str(root / "manifest.json"), cwd=root)
    assert result.returncode == 2 and "golden inputs" in result.stderr and "/etc/passwd" in result.stderr


def test_ir_weights_are_the_bin_openvino_loads_and_classify_runs_the_bytes_it_hashed(build, tmp_path):
    """The issue's case: weights.path redirected to an intact copy (its sha256 matching) and the
    real .bin damaged. Refused by the manifest's reader; and with the manifest intact, a .bin
    swapped behind it is refused by classify, verify and bench alike."""
    root, _ = build
    good = root / "engines/openvino/model.fp32.bin"
    shutil.copy(good, root / "elsewhere.bin")
    with open(good, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 64)
    _edit(root, lambda d: next(a for a in d["artifacts"] if a["path"] == IR)["weights"].update(
        path="elsewhere.bin"))
    with pytest.raises(ManifestError, match="OpenVINO loads engines/openvino/model.fp32.bin"):
        read_manifest(root / "manifest.json")
    redirected = _box("classify", str(root / "manifest.json"), str(tmp_path), "--runtime", "openvino",
                      "--precision", "fp32", cwd=root)
    assert redirected.returncode == 2 and "OpenVINO loads" in redirected.stderr, redirected.stderr
    _edit(root, lambda d: next(a for a in d["artifacts"] if a["path"] == IR)["weights"].update(
        path="engines/openvino/model.fp32.bin"))
    for args in (["classify", str(root / "manifest.json"), str(tmp_path), "--runtime", "openvino",
                  "--precision", "fp32"], ["verify", str(root / "manifest.json")],
                 ["bench", str(root / "manifest.json"), "--seconds", "0.1"]):
        swapped = _box(*args, cwd=root)
        assert swapped.returncode == 2 and "model.fp32.bin" in swapped.stderr, (args, swapped.stderr)
        assert "sha256" in swapped.stderr


def test_plan_host_code_runs_only_when_the_person_running_the_box_asks(gated_build, monkeypatch):
    from attnvgg_runtime.manifest import Artifact
    from attnvgg_runtime.verify import readers

    seen = []
    monkeypatch.setattr(readers, "TensorRTRunner",
                        lambda path, host_code_allowed: seen.append(host_code_allowed))
    manifest = read_manifest(gated_build / "manifest.json")
    manifest.tensorrt = {"version_compatible": True}  # an unsigned file's say: not heeded
    plan = Artifact("engines/trt/int8.plan", "plan", "int8", "tensorrt", 1, "0" * 64)
    readers.runner_for(plan, gated_build, manifest, "tensorrt")
    readers.runner_for(plan, gated_build, manifest, "tensorrt", plan_code_allowed=True)
    assert seen == [False, True]
    parser = cli._parser()
    assert not parser.parse_args(["verify", "m.json"]).allow_plan_code
    assert parser.parse_args(["verify", "m.json", "--allow-plan-code"]).allow_plan_code


@pytest.mark.parametrize("images", ["0", "-3", "x"])
def test_verify_refuses_fewer_than_one_image(gated_build, images, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify", str(gated_build / "manifest.json"), "--images", images])
    assert exit_.value.code == 2 and "--images" in capsys.readouterr().err


def test_bench_with_no_reader_installed_is_an_error_and_keeps_the_stored_rows(build, monkeypatch, capsys):
    from attnvgg_runtime import bench

    root, _ = build
    stored = '{"rows": [{"runtime": "onnxruntime"}]}\n'
    (root / bench.BOX_BENCH_JSON).write_text(stored)
    monkeypatch.setattr(bench, "installed_runtimes", lambda: [])
    assert cli.main(["bench", str(root / "manifest.json"), "--seconds", "0.1"]) == 2
    assert "neither onnxruntime nor openvino is installed" in capsys.readouterr().err
    assert (root / bench.BOX_BENCH_JSON).read_text() == stored
    for bad in (["--batches", "0"], ["--batches", ","], ["--seconds", "0"], ["--seconds", "nan"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["bench", str(root / "manifest.json"), *bad])
        assert exit_.value.code == 2


def test_an_artifact_the_runtime_cannot_read_is_a_named_error(build, capsys):
    """Random bytes with a matching sha256 (a manifest rewritten by hand): exit 2 naming the file
    and the runtime, not ONNX Runtime's traceback and not exit 1 (which means a breach)."""
    root, _ = build
    junk = root / "engines/ort/model.fp32.ort"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    _edit(root, lambda d: _point_at(d, "engines/ort/model.fp32.ort", "engines/ort/model.fp32.ort",
                                    sha256_file(junk)))
    code = cli.main(["classify", str(root / "manifest.json"), str(root / "x.png"), "--precision",
                     "fp32", "--runtime", "onnxruntime", "--allow-unverified"])
    err = capsys.readouterr().err
    assert code == 2 and "engines/ort/model.fp32.ort" in err and "onnxruntime cannot load it" in err


def test_golden_io_holding_a_pickled_object_is_a_named_error(build, capsys):
    root, _ = build
    golden = json.loads((root / "golden/inputs.json").read_text())
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    golden[0]["input"]["array"] = base64.b64encode(buffer.getvalue()).decode()
    (root / "golden/inputs.json").write_text(json.dumps(golden))
    _edit(root, lambda d: d["golden"]["inputs"].update(sha256=sha256_file(root / "golden/inputs.json")))
    assert cli.main(["verify", str(root / "manifest.json")]) == 2
    err = capsys.readouterr().err
    assert "golden I/O" in err and "cannot be read" in err


def test_the_writer_refuses_a_path_out_of_the_build(precision_build, tmp_path):
    manifest = read_manifest(precision_build / "manifest.json").to_json()
    manifest["artifacts"][0]["path"] = "../model.onnx"
    with pytest.raises(OutsideBuild, match="'../model.onnx'"):
        write_manifest(tmp_path / "manifest.json", Manifest.from_json(manifest))
    assert not (tmp_path / "manifest.json").exists()
