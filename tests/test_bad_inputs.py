"""Every bad input of benchmarks/bad_inputs.py, run as a user runs it against a gated reduced build:
each exits as expected (2 for bad input, never 1, which means a breach; 0 where it must pass),
says the words that name the thing or the fix, and shows no traceback. The stored table
(docs/runs/bad-inputs-*, docs/refuses.md) is this script's output on a whole CI build."""

import pytest

from benchmarks.bad_inputs import cases, run_all


@pytest.mark.slow
def test_every_bad_input_is_refused_as_the_table_says(gated_build, tmp_path):
    rows = run_all(gated_build, tmp_path, log=lambda *_: None)
    assert len(rows) == len(cases()) >= 40
    failed = [r for r in rows if not r["holds"]]
    assert failed == [], failed
    assert {r["exit"] for r in rows} == {0, 2}
