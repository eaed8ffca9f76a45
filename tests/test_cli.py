import json
import subprocess
import sys


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
    result = _run("--debug", "card", "--variant", "se", "--img-size", "100")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "multiple of 32" in result.stderr


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
    result = subprocess.run(["make", "-n", "engine", f"OUT={tmp_path}", "EVAL_DIR=val/"], cwd=repo,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    precision = [line for line in lines if "attnvgg-export precision" in line]
    parity = [line for line in lines if "attnvgg-export parity" in line]
    assert precision and parity and "--eval-dir" not in precision[0]
    assert parity[0].rstrip().endswith("--eval-dir val/")
