"""The README's figures are rendered from the files of one named run (docs/runs/<name>/), never
copied by hand: a hand edit, or a run whose files changed, fails here."""

import re

from benchmarks.figures import REPO, RUNS, render


def test_readme_figures_are_rendered_from_their_named_run():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"<!-- figures:(\S+):begin -->\n(.*?)<!-- figures:\1:end -->", text, re.S)
    assert blocks, "README.md carries no generated figures block"
    for name, block in blocks:
        assert (RUNS / name / "bench.json").is_file(), name
        assert block == render(RUNS / name), f"README block {name} is not what its run renders"
