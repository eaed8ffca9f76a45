"""The README's and docs' figures are rendered from the files of named runs (docs/runs/), never
copied by hand: a hand edit, or a run whose files changed, fails here."""

import re

from benchmarks.figures import FIGURE_DOCUMENTS, REPO, RUNS, render, runs_link


def test_readme_and_docs_figures_are_rendered_from_their_named_run():
    for document in FIGURE_DOCUMENTS:
        text = document.read_text()
        blocks = re.findall(r"<!-- figures:(\S+):begin -->\n(.*?)<!-- figures:\1:end -->", text, re.S)
        assert blocks, f"{document.name} carries no generated figures block"
        for name, block in blocks:
            if not (RUNS / name / "bench.json").is_file():
                continue  # another renderer's block (docs/precision.md's table)
            assert block == render(RUNS / name, runs_link(document)), \
                f"{document.name} block {name} is not what its run renders"


def test_no_share_of_peak_passes_100_percent():
    import json

    from attnvgg_export.report.report import bench_limits, peak_share

    # a runtime's fused convolutions beat the GEMM probe: the limit is then that row
    bench = {"gemm_probes": {"onnxruntime": {"fp32": 100.0}},
             "rows": {"eager fp32": {"precision": "fp32"}, "openvino m.xml": {"precision": "fp32"},
                      "onnxruntime m.fp16.onnx": {"precision": "fp16"}},
             "results": {"eager fp32": {"1": {"gmacs_per_s": 60.0}},
                         "openvino m.xml": {"1": {"gmacs_per_s": 130.0}},
                         "onnxruntime m.fp16.onnx": {"1": {"gmacs_per_s": 65.0}}}}
    assert bench_limits(bench) == {"fp32": {"gmacs": 130.0, "by": "openvino m.xml at batch 1"}}
    assert peak_share(bench, "openvino m.xml", bench["results"]["openvino m.xml"]["1"]) == 1.0
    assert peak_share(bench, "onnxruntime m.fp16.onnx", {"gmacs_per_s": 65.0}) == 0.5  # fp32's limit
    for path in RUNS.glob("*/bench.json"):  # every stored run, rendered under this definition
        stored = json.loads(path.read_text())
        shares = [peak_share(stored, name, r) for name, per_batch in stored["results"].items()
                  for r in per_batch.values() if "gmacs_per_s" in r]
        assert shares and max(shares) <= 1.0 + 1e-12, path


def test_the_precision_table_is_rendered_from_its_stored_run():
    import json

    from benchmarks import precision_table

    text = precision_table.DOC.read_text()
    blocks = re.findall(r"<!-- figures:(\S+):begin -->\n(.*?)<!-- figures:\1:end -->", text, re.S)
    assert blocks, "docs/precision.md carries no generated accuracy table"
    for name, block in blocks:
        run = json.loads((RUNS / name / precision_table.STORED).read_text())
        assert block == precision_table.render(run), f"docs/precision.md block {name} is stale"
        assert all(row["images"] == run["rows"][0]["images"] for row in run["rows"])


def test_the_budget_margins_table_is_rendered_from_its_stored_runs():
    """docs/precision.md's "Budgets and their margins": every budget of tolerances.toml (the sa
    variant's too) measured in a stored run (the CPUs this machine cannot run among them); every
    budget that ties an artifact to another reading of it at a margin of 2 or more, every budget
    against eager met."""
    import tomllib

    from benchmarks import budget_margins

    runs = budget_margins.stored_runs()
    text = budget_margins.DOC.read_text()
    block = re.search(r"<!-- budget-margins:begin -->\n(.*?)\n<!-- budget-margins:end -->", text, re.S)
    assert block and block.group(1) == budget_margins.render(runs), "the budget-margins block is stale"
    rows = budget_margins.rows(runs)
    toml = tomllib.loads((budget_margins.REPO / "attnvgg_export/verify/tolerances.toml").read_text())
    listed = {f"{p} {k}" for p, b in toml["precision"].items() for k in b}
    listed |= {f"{v} {p} {k}" for v, o in toml["variant"].items() for p, b in o.items() for k in b}
    assert {r["budget"] for r in rows} == listed
    for row in rows:
        assert row["worst"] is not None, f"{row['budget']}: measured in no stored run"
        assert row["margin"] >= (1 if row["against_eager"] else 2), row


def test_the_arm_numerics_tables_are_rendered_from_their_stored_runs():
    import json

    from benchmarks import arm_numerics

    text = (REPO / "docs" / "precision.md").read_text()
    blocks = re.findall(r"<!-- arm-numerics:(\S+):begin -->\n(.*?)<!-- arm-numerics:\1:end -->", text, re.S)
    assert len(blocks) == 2, "docs/precision.md lacks the two ARM tables"
    for name, block in blocks:
        run = json.loads((RUNS / name / "arm-numerics.json").read_text())
        assert block == arm_numerics.render(run), f"docs/precision.md ARM block {name} is stale"
        assert run["arm"]["machine"] == "aarch64" and run["x86"]["machine"] == "x86_64"


def test_the_gate_cost_table_is_rendered_from_its_stored_run_and_kept_the_verdicts():
    import json

    from benchmarks.gate_cost import DOCUMENT, compare
    from benchmarks.gate_cost import render as render_cost

    blocks = re.findall(r"<!-- gate-cost:(\S+):begin -->\n(.*?)<!-- gate-cost:\1:end -->",
                        DOCUMENT.read_text(), re.S)
    assert blocks, f"{DOCUMENT.name} carries no gate-cost block"
    for name, block in blocks:
        result = json.loads((RUNS / name / "gate-cost.json").read_text())
        assert block == render_cost(result), f"block {name} is not what its run renders"
        assert all(run["readings"] for run in result["runs"]), name  # a run that read nothing proves nothing
        assert all(run["readings"].keys() == result["runs"][0]["readings"].keys() for run in result["runs"])
        assert compare(result)["differing_verdicts"] == [], name  # the lighter gate's verdicts
        assert {run["label"] for run in result["runs"]} == {"baseline", "first run", "re-run"}


def test_the_eval_scale_table_is_rendered_from_its_stored_run_and_its_model_held():
    import json

    from benchmarks.eval_scale import DOCUMENT
    from benchmarks.eval_scale import render as render_scale

    blocks = re.findall(r"<!-- eval-scale:(\S+):begin -->\n(.*?)<!-- eval-scale:\1:end -->",
                        DOCUMENT.read_text(), re.S)
    assert blocks, f"{DOCUMENT.name} carries no eval-scale block"
    for name, block in blocks:
        result = json.loads((RUNS / name / "eval-scale.json").read_text())
        assert block == render_scale(result), f"block {name} is not what its run renders"
        # both models checked against a measured run (the Ray one fitted on two other runs)
        assert {"in_process", "ray"} <= set(result["checks"]), result["checks"].keys()
        for check in result["checks"].values():
            assert check["images"] > 0 and abs(check["ratio"] - 1) <= check["tolerance"] <= 0.2, check
        assert result["results_compared"] == result["images"] * result["readings"]
        ray = [row["hours"] for row in result["projection"]["table"] if row["where"] == "Ray"]
        assert ray == sorted(ray, reverse=True) and result["readings"] >= 2


def test_the_bad_inputs_table_is_rendered_from_its_stored_run():
    from benchmarks import bad_inputs

    text = bad_inputs.DOC.read_text()
    blocks = re.findall(r"<!-- figures:(\S+):begin -->\n(.*?)<!-- figures:\1:end -->", text, re.S)
    assert blocks, "docs/refuses.md carries no generated table"
    for name, block in blocks:
        assert block == bad_inputs.render_stored(name), f"docs/refuses.md block {name} is stale"
        import json

        rows = json.loads((RUNS / name / "bad-inputs.json").read_text())["rows"]
        assert len(rows) == len(bad_inputs.cases()) and all(r["holds"] for r in rows)
