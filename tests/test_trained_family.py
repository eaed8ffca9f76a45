"""A user's own models with default settings: a family trained afresh by a script (two seeds, 32
and 64 px, two widths; benchmarks.trained_family), each built by `make engine` with CHECKPOINT,
CALIB_DIR, EVAL_DIR, NUM_CLASSES, WIDTH_MULT and IMG_SIZE only. Every build passes its gate, and
the declared sides follow the size each was trained at."""

import json

import pytest

from benchmarks import trained_family


@pytest.mark.slow
def test_a_family_of_user_trained_models_passes_make_engine_with_defaults(tmp_path):
    lines: list[str] = []
    run = trained_family.run_family(tmp_path, log=lines.append)
    for record in run["members"]:
        assert record["returncode"] == 0 and record["passed"], "\n".join(lines)
        size = record["member"]["size"]
        assert record["sides"]["height"] == {"min": min(32, size), "opt": size, "max": 2 * size,
                                             "multiple_of": 32}
        assert record["eval_images"] == 600 and record["readings"] >= 10
    members = {(m["member"]["seed"], m["member"]["size"], m["member"]["width"]) for m in run["members"]}
    assert len(members) >= 4


def test_the_stored_family_run_is_rendered_into_the_docs():
    doc = trained_family.DOC.read_text()
    names = [p.name for p in trained_family.RUNS.glob("trained-family-*")]
    assert names, "no stored family run: python -m benchmarks.trained_family --name trained-family-<cpu>"
    for name in names:
        run = json.loads((trained_family.RUNS / name / trained_family.STORED).read_text())
        block = doc.split(f"<!-- family:{name}:begin -->\n", 1)[1].split(f"<!-- family:{name}:end -->")[0]
        assert block == trained_family.render(run), \
            f"run: python -m benchmarks.trained_family --name {name} --render"
        assert all(m["returncode"] == 0 and m["passed"] for m in run["members"])
