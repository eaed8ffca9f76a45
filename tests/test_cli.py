import json
import subprocess
import sys
from pathlib import Path


def _run(*args):
    return subprocess.run([sys.executable, "-m", "attnvgg_export", *args],
                          capture_output=True, text=True, timeout=300)


def test_card_writes_markdown_and_json(tmp_path):
    result = _run("card", "--variant", "se", "--img-size", "64", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "+76,288" in result.stdout
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["extra_parameters"] == 76_288 and card["img_size"] == 64
    assert (tmp_path / "card.md").read_text() == result.stdout


def test_errors_are_one_line_without_traceback():
    result = _run("card", "--variant", "vgg19")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown variant 'vgg19'; known variants: la, sa, se, vgg16"]


def test_debug_shows_the_traceback():
    result = _run("--debug", "card", "--variant", "vgg19")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "unknown variant 'vgg19'" in result.stderr


def test_export_refuses_a_bad_range_in_one_line(tmp_path):
    result = _run("export", "--variant", "se", "--height", "32,224,450", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: height range value 450 is not servable: every variant needs height to be a "
        "multiple of 32 and >= 32 (five 2x2 pools)"]
    assert list(tmp_path.iterdir()) == []


def test_export_writes_model_and_manifest(tmp_path):
    result = _run("export", "--variant", "vgg16", "--width-mult", "0.125", "--num-classes", "4",
                  "--batch", "1,2,4", "--height", "32,64,128", "--width", "32,64,128",
                  "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout and "peak memory" in result.stdout
    manifest = json.loads((tmp_path / "vgg16" / "manifest.json").read_text())
    assert manifest["dynamic"]["batch"] == {"min": 1, "opt": 2, "max": 4}


def test_eval_dir_goes_to_the_gate_only(tmp_path):
    # EVAL_DIR is judged by the gate; the precision stage never sees it (calibration apart)
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "val").mkdir()
    result = subprocess.run(["make", "-n", "engine", f"OUT={tmp_path}", f"EVAL_DIR={tmp_path}/val/"],
                            cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    precision = [line for line in lines if "attnvgg-export precision" in line]
    parity = [line for line in lines if "attnvgg-export parity" in line]
    assert precision and parity and "--eval-dir" not in precision[0]
    assert parity[0].rstrip().endswith(f"--eval-dir {tmp_path}/val/")


def test_no_value_is_silently_replaced_and_each_refusal_names_its_variable(tmp_path):
    """IMG_SIZE=0 built the 224 range and WIDTH_MULT=0 a full-size model (issue 41): each is now
    refused before anything is written, naming the Make variable and what is allowed."""
    cases = {("--img-size", "0"): "IMG_SIZE='0' is not allowed: the size the model was trained at",
             ("--img-size", "-5"): "IMG_SIZE='-5' is not allowed",
             ("--img-size", "100"): "a multiple of 32 that is at least 32",
             ("--width-mult", "0"): "WIDTH_MULT='0' is not allowed: a channel-width multiplier > 0",
             ("--width-mult", "nan"): "WIDTH_MULT='nan'",
             ("--num-classes", "0"): "NUM_CLASSES='0' is not allowed"}
    for (flag, value), message in cases.items():
        result = _run("export", "--variant", "se", flag, value, "--out", str(tmp_path))
        assert result.returncode == 2 and message in result.stderr, (flag, value, result.stderr)
        assert "Traceback" not in result.stderr
    ranged = _run("export", "--variant", "se", "--height=-5,-5,-10", "--out", str(tmp_path))
    assert ranged.returncode == 2 and "HEIGHT_RANGE / --height" in ranged.stderr
    assert "multiples of 32, at least 32 (e.g. 32,224,448)" in ranged.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_tolerances_value_that_is_no_number_is_refused_before_the_gate(tmp_path):
    from attnvgg_export.models import ConfigError
    from attnvgg_export.verify.budgets import load_tolerances

    bad = tmp_path / "tolerances.toml"
    bad.write_text('[precision.int8]\nrel_l2_max = "abc"\n')
    try:
        load_tolerances("se", bad)
    except ConfigError as e:
        assert "[precision.int8] rel_l2_max = 'abc': a budget is a number >= 0" in str(e)
    else:
        raise AssertionError("a budget of 'abc' was accepted")


def test_make_names_a_missing_file_or_folder_variable_and_the_fix(tmp_path):
    """Make's own message for a missing prerequisite ("No rule to make target") named neither the
    variable nor the fix; OUT= a file failed in mkdir."""
    (tmp_path / "a-file").write_text("")
    for variable, value, says in (("CHECKPOINT", tmp_path / "missing.pt", "does not exist: give the path"),
                                  ("CALIB_DIR", tmp_path / "nope", "does not exist"),
                                  ("LABELS", tmp_path, "is a folder"),
                                  ("OUT", tmp_path / "a-file", "is a file: name a folder")):
        result = subprocess.run(["make", "-n", "engine", f"{variable}={value}"], capture_output=True,
                                text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
        assert result.returncode == 2 and f"{variable}={value} {says}" in result.stderr, result.stderr
