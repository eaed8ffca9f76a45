"""The lighter gate (issue 34) against the thorough one, the gate as it was before, on the same
build: the same verdicts and the same figures where they read the same images; and eager's
outputs, stored by a whole gate run, read back by the next one only while they are this model's."""

import json

import numpy as np
import pytest

from attnvgg_export.verify.gate import run_parity
from attnvgg_export.verify.references import REFERENCES_FILE, read_references
from attnvgg_runtime.manifest import read_manifest
from tests.conftest import copy_build


def _by_reading(artifacts: list[dict]) -> dict:
    return {(a["path"], a["reader"]): a for a in artifacts}


@pytest.mark.slow  # a thorough gate beside the lighter one: 17-19 s
def test_the_lighter_gate_gives_the_thorough_gates_verdicts_and_figures(gated_build, engines_build,
                                                                        tmp_path):
    # gated_build is the lighter gate's run on a copy of engines_build
    light = json.loads((gated_build / "parity.json").read_text())
    thorough = run_parity(copy_build(engines_build, tmp_path) / "manifest.json", log=lambda *_: None,
                          thorough=True)
    assert light["passed"] and thorough.passed, thorough.failures()
    # the held-out images run at the max batch stand for the (max batch, opt size) corner
    dynamic = read_manifest(engines_build / "manifest.json").dynamic
    merged = f"{dynamic['batch']['max']}x3x{dynamic['height']['opt']}x{dynamic['width']['opt']}"
    assert set(thorough.shapes) == set(light["shapes"])  # the same shapes proven
    # proven in one run of the held-out images at the max batch
    assert merged in thorough.artifacts[0].cases and merged not in light["artifacts"][0]["cases"]
    lights = _by_reading(light["artifacts"])
    thoroughs = _by_reading([a.to_json() for a in thorough.artifacts])
    assert lights.keys() == thoroughs.keys()
    for key, entry in lights.items():
        other = thoroughs[key]
        assert (entry["passed"], entry["skipped"]) == (other["passed"], other["skipped"]), key
        if entry["skipped"]:
            continue
        for name, figures in entry["cases"].items():
            theirs = other["cases"][name]
            if entry["precision"] == "int8" or name == "heldout":  # the same images: the same figures
                for measure in ("rel_l2", "rel_l2_image", "cosine", "top1"):
                    assert figures[measure] == pytest.approx(theirs[measure], rel=1e-4, abs=1e-7), \
                        (key, name, measure)
            else:  # a float graph reads the first images of a corner: near what all of them read
                # (the worst image is read against the case's median norm, which the subset moves)
                assert figures["rel_l2_image"] <= theirs["rel_l2_image"] * 1.25 + 1e-5, (key, name)
        if "rel_l2_vs_reconverted" in entry["cases"].get("heldout", {}):
            assert entry["cases"]["heldout"]["rel_l2_vs_reconverted"] == pytest.approx(
                other["cases"]["heldout"]["rel_l2_vs_reconverted"], abs=1e-7)


@pytest.mark.slow  # four gate runs: 17-20 s
def test_a_gate_rerun_reads_eagers_outputs_only_while_they_are_this_models(gated_build, tmp_path):
    root = copy_build(gated_build, tmp_path)  # its gate stored eager's outputs
    manifest = root / "manifest.json"
    assert (root / REFERENCES_FILE).is_file()
    assert read_manifest(manifest).parity["eager-references"]["sha256"]
    first = json.loads((root / "parity.json").read_text())
    second_log = []
    second = run_parity(manifest, log=second_log.append)
    assert any("read from" in line for line in second_log if line.startswith("eager PyTorch"))
    assert [(a["path"], a["reader"], a["passed"], a["cases"]) for a in first["artifacts"]] == \
        [(a.path, a.reader, a.passed, a.cases) for a in second.artifacts]
    # edited bytes: not this build's file (sha256), computed again and rewritten
    data = bytearray((root / REFERENCES_FILE).read_bytes())
    data[-100] ^= 0xFF
    (root / REFERENCES_FILE).write_bytes(bytes(data))
    third_log = []  # one artifact is enough to see eager computed again
    assert run_parity(manifest, log=third_log.append, only={"model.onnx"}).passed
    assert any("computed" in line for line in third_log if line.startswith("eager PyTorch"))
    # another model, split, range or torch (the key): not read
    assert read_references(root, read_manifest(manifest)) is not None
    for field, value in (("model", {"seed": 1}), ("data_split", {"seed": 7}), ("dynamic", {})):
        changed = read_manifest(manifest)
        setattr(changed, field, {**getattr(changed, field), **value} if value else {})
        assert read_references(root, changed) is None, field


def test_golden_io_writes_the_merged_corner_as_a_case_of_its_own(gated_build):
    from attnvgg_runtime.verify.golden import read_golden

    manifest = read_manifest(gated_build / "manifest.json")
    dynamic = manifest.dynamic
    corner = f"{dynamic['batch']['max']}x3x{dynamic['height']['opt']}x{dynamic['width']['opt']}"
    cases = {c["name"]: c for c in manifest.golden["cases"]}
    assert cases["heldout"]["batch"] == min(8, dynamic["batch"]["max"])
    assert cases[corner]["batch"] == dynamic["batch"]["max"] and cases[corner]["iterations"] == 1
    golden = read_golden(gated_build, manifest.golden)
    batches, outputs = golden[corner]
    held, held_outputs = golden["heldout"]
    count = min(len(outputs), len(held_outputs))
    # the same images, eager's same outputs: one run of the gate, two shapes for the box
    assert np.array_equal(np.concatenate(batches)[:count], np.concatenate(held)[:count])
    assert np.allclose(outputs[:count], held_outputs[:count], rtol=1e-5, atol=1e-6)


def test_eagers_outputs_are_computed_in_a_process_of_their_own_the_same_as_in_this_one(gated_build,
                                                                                    tmp_path):
    """A gate that computes eager's outputs does it in a child Python: torch is never imported
    in the gate's process while its readers run (at full size torch and eager's heap under the
    reader sessions made the first run's peak 3.26 GiB, where a re-run's was 2.63), and the
    outputs are the ones computed here."""
    import subprocess
    import sys
    from pathlib import Path

    from attnvgg_export.verify.references import eager_references

    root = copy_build(gated_build, tmp_path)
    (root / REFERENCES_FILE).unlink()  # not stored: the gate computes them
    script = ("import sys\n"
              "from attnvgg_export.verify.gate import gate_inputs\n"
              "inputs = gate_inputs(sys.argv[1], None, None, None, None, None, print)\n"
              "assert 'torch' not in sys.modules, 'the gate imported torch'\n")
    done = subprocess.run([sys.executable, "-c", script, str(root / "manifest.json")], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eager PyTorch fp32's outputs: computed" in done.stdout
    stored = read_references(root, read_manifest(root / "manifest.json"))  # what the child computed
    here = eager_references(read_manifest(root / "manifest.json"), None, None)
    assert stored.cases.keys() == here.cases.keys() and stored.heldout == here.heldout
    for name in here.cases:
        assert np.array_equal(stored.cases[name].images, here.cases[name].images), name
        assert np.array_equal(stored.references[name], here.references[name]), name


def test_an_error_in_eagers_process_is_raised_in_the_gate_as_itself(gated_build, tmp_path):
    from attnvgg_export.verify.references import computed_apart
    from attnvgg_runtime.manifest import ManifestError, write_manifest

    root = copy_build(gated_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    manifest.model = {**manifest.model, "checkpoint": str(root / "weights.safetensors"),
                      "checkpoint_sha256": "0" * 64}
    (root / "weights.safetensors").write_bytes(b"not the weights the build was made from")
    write_manifest(root / "manifest.json", manifest)
    with pytest.raises(ManifestError, match="changed since the build"):
        computed_apart(root / "manifest.json", None, None)


def test_a_forwarded_error_is_a_toolchain_class_or_says_what_it_was():
    from attnvgg_export.models import ConfigError, ToolchainError
    from attnvgg_export.verify.references import forwarded_error

    known = forwarded_error({"module": "attnvgg_export.models", "class": "ConfigError", "message": "m"})
    assert type(known) is ConfigError and str(known) == "m"
    for module, name in (("builtins", "SystemExit"), ("attnvgg_export.models", "NoSuchError"),
                         ("no_such_module", "ConfigError"), ("attnvgg_export.models", "Path")):
        error = forwarded_error({"module": module, "class": name, "message": "m"})
        assert type(error) is ToolchainError and f"{module}.{name}" in str(error), (module, name)
