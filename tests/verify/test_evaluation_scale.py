"""EVAL_DIR at scale: per-image results stored and resumed, a rebuilt artifact evaluated alone,
and the same results, bit for bit, in this process and on a local 2-worker Ray cluster
(attnvgg_export.verify.evaluate, results, cluster)."""

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from attnvgg_export.verify.evaluate import read_unit as READ_UNIT

INT8 = "model.int8-cpu.onnx"


@pytest.fixture(scope="module")
def eval_npz(tmp_path_factory):
    from benchmarks import digits

    pixels, labels = digits.digit_images()
    path = tmp_path_factory.mktemp("eval") / "eval-600.npz"
    np.savez(path, images=pixels[digits.UNSEEN_START:], labels=labels[digits.UNSEEN_START:])
    return path


def _rows(store) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT artifact_sha256, reader, cpu, preprocessing_sha256, image_sha256, label, "
                          "top5, correct1, correct5 FROM results ORDER BY 1, 2, 3, 4, 5").fetchall()


def _accuracy(report) -> dict:
    """Each reading's accuracy record, but for the CPU and threads that computed it."""
    return {e.label: {k: v for k, v in e.accuracy.items() if k != "cpus"} for e in report.artifacts}


class Stopped(Exception):
    """An evaluation stopped half-way (a kill, a Ctrl-C)."""


def _counting_reads(monkeypatch, stop_after: int | None = None) -> list[int]:
    """How many images each unit read held, through read_unit; Stopped after ``stop_after``
    units."""
    from attnvgg_export.verify import evaluate

    read, real = [], READ_UNIT

    def counted(runner, unit, pre):
        if stop_after is not None and len(read) >= stop_after:
            raise Stopped
        read.append(len(unit.entries))
        return real(runner, unit, pre)

    monkeypatch.setattr(evaluate, "read_unit", counted)
    return read


@pytest.mark.slow  # starts a local Ray cluster (~30 s on 2 cores): `make test-slow`, in CI
def test_the_same_results_bit_for_bit_in_process_and_on_a_local_two_worker_ray_cluster(
        digits_build, eval_npz, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="the ray extra (make setup installs it)")
    from attnvgg_export.verify.gate import run_parity
    from tests.conftest import copy_build

    root = copy_build(digits_build.manifest.parent, tmp_path)
    local, cluster = tmp_path / "in-process.sqlite", tmp_path / "ray.sqlite"
    monkeypatch.setenv("EVAL_STORE", str(local))
    in_process = run_parity(root / "manifest.json", log=lambda *_: None, only={INT8}, eval_dir=eval_npz)
    monkeypatch.setenv("EVAL_STORE", str(cluster))
    monkeypatch.setenv("EVAL_WORKERS", "2")
    lines = []
    on_ray = run_parity(root / "manifest.json", log=lines.append, only={INT8}, eval_dir=eval_npz,
                        cluster="local")
    assert any("on a local Ray cluster, 2 workers of 1 CPU" in line for line in lines), lines
    # the same results for every image and reading; each kept with the reader threads that made it
    results = [[row[:2] + row[3:] for row in _rows(store)] for store in (local, cluster)]
    assert results[0] == results[1] and len(results[0]) == 3 * 600  # eager and two readers
    assert {row[2].split(", ")[1] for row in _rows(cluster)} == {"1 threads"}
    assert _accuracy(in_process) == _accuracy(on_ray)
    assert [e.passed for e in in_process.artifacts] == [e.passed for e in on_ray.artifacts] == [True, True]
    parity = json.loads((root / "parity.json").read_text())
    assert parity["evaluation"]["where"] == "a local Ray cluster" and parity["evaluation"]["images"] == 600


@pytest.mark.slow  # 18.1 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
def test_a_stopped_evaluation_resumes_and_a_rebuilt_artifact_is_read_alone(
        digits_build, eval_npz, tmp_path, monkeypatch):
    from attnvgg_export.verify.gate import run_parity
    from benchmarks.planted_bugs import zero_channels
    from tests.conftest import copy_build

    root = copy_build(digits_build.manifest.parent, tmp_path)
    monkeypatch.setenv("EVAL_STORE", str(tmp_path / "store.sqlite"))
    units = -(-600 // 8)  # the digits build's max batch is 8
    read = _counting_reads(monkeypatch, stop_after=units + 5)  # eager, then 5 units of the first reader
    with pytest.raises(Stopped):
        run_parity(root / "manifest.json", log=lambda *_: None, only={INT8}, eval_dir=eval_npz)
    assert len(_rows(tmp_path / "store.sqlite")) == 600 + 5 * 8  # what was read is kept
    complete = _rows(tmp_path / "store.sqlite")

    read = _counting_reads(monkeypatch)
    lines = []
    resumed = run_parity(root / "manifest.json", log=lines.append, only={INT8}, eval_dir=eval_npz)
    assert sum(read) == 2 * 600 - 5 * 8, "only what the stopped run had not stored is read"
    assert any(f"{600 + 5 * 8} results already stored, {2 * 600 - 5 * 8} to read" in line for line in lines)
    assert all(e.accuracy["images"] == 600 for e in resumed.artifacts)
    assert set(complete) <= set(_rows(tmp_path / "store.sqlite"))

    zero_channels(root, "features.12", 0.875)  # the int8 graph rebuilt with other bytes
    read = _counting_reads(monkeypatch)
    bad = run_parity(root / "manifest.json", log=lambda *_: None, only={INT8}, eval_dir=eval_npz)
    assert sum(read) == 2 * 600, "eager's results are still this model's: only the new bytes are read"
    assert bad.artifacts[0].accuracy["verdict"] == "over budget" and not bad.passed


def test_a_reading_with_results_missing_is_an_error_never_a_pass(digits_build, eval_npz, tmp_path):
    from attnvgg_export.verify.evaluate import artifact_reading, labelled_set, stored_results
    from attnvgg_export.verify.results import ResultStore
    from attnvgg_runtime.manifest import read_manifest

    manifest = read_manifest(digits_build.manifest)
    labelled = labelled_set(eval_npz, manifest, tmp_path, store=tmp_path / "empty.sqlite",
                            log=lambda *_: None)
    with ResultStore(labelled.store) as store, pytest.raises(RuntimeError, match="600 of 600 EVAL_DIR images "
                                                             "have no stored result"):
        stored_results(store, artifact_reading(manifest, INT8, "onnxruntime"), labelled, ["any"])


def test_evaluating_in_process_imports_no_ray(digits_build, eval_npz, tmp_path):
    script = (f"import sys; from attnvgg_export.verify.gate import run_parity; "
              f"r = run_parity({str(digits_build.manifest)!r}, log=lambda *_: None, only={{{INT8!r}}}, "
              f"eval_dir={str(eval_npz)!r}); "
              f"assert r.artifacts[0].accuracy['images'] == 600; "
              f"assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    from tests.conftest import copy_build

    root = copy_build(digits_build.manifest.parent, tmp_path)
    script = script.replace(str(digits_build.manifest), str(root / "manifest.json"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={"EVAL_STORE": str(tmp_path / "s.sqlite"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_two_readers_of_one_library_keep_their_own_results(tmp_path):
    # OpenVINO's fp32 reading of an IR and its bf16 entry: the same bytes, one library version
    from attnvgg_export.verify.results import ImageResult, Reading, ResultStore

    fp32, bf16 = (Reading(f"model.xml [{r}]", "model.xml", r, "a" * 64, "openvino 2025.4.0")
                  for r in ("openvino", "openvino-bf16"))
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add(fp32, "cpu", "pre", [ImageResult("i" * 64, 3, (3, 1, 2, 0, 4))])
        store.add(bf16, "cpu", "pre", [ImageResult("i" * 64, 3, (1, 3, 2, 0, 4))])
        assert store.results(fp32, ["cpu"], "pre")["i" * 64].correct1
        assert not store.results(bf16, ["cpu"], "pre")["i" * 64].correct1
        assert store.results(fp32, ["another cpu"], "pre") == {}
