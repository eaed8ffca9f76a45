"""Golden I/O: the gate's inputs at every gated shape and eager fp32's outputs for them, in
Polygraphy's JSON format (what `polygraphy run --save-inputs / --save-outputs` write), so that
a box without torch re-checks the artifacts on its own kernels (`attnvgg-runtime verify`,
attnvgg_runtime.verify.on_box) and a GPU box checks a plan with NVIDIA's own tool (docs/tensorrt.md).

golden/inputs.json is a list of feed dicts {"input": batch}, one per iteration; golden/outputs.json
is a RunResults with one runner, "eager-pytorch-fp32", and an IterationResult {"logits": ...} per
iteration. Each gated case is a run of consecutive iterations at its batch size; the manifest's
``golden`` record says which (``cases``), with the files' sha256 and the budgets they are judged by.
Written with Polygraphy's own classes; read here with json, base64 and numpy only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from attnvgg_runtime.files import atomic_path
from attnvgg_runtime.manifest import ManifestError, inside_build, sha256_file

GOLDEN_DIR = "golden"
GOLDEN_RUNNER = "eager-pytorch-fp32"
# images at the opt size: enough to resolve the agreement budgets the gate applies with trained
# weights (int8 top-1 >= 0.95 needs 20: one disagreement moves it by 1/N); at each corner one
# full batch and at least 4 images. Polygraphy's JSON holds arrays in base64: the inputs of the
# default full-size range take 59 MB (README), almost half of it the max-batch corner's 32 images.
OPT_IMAGES = 24
CORNER_IMAGES = 4
GOLDEN_BATCH = 8  # the held-out images' batch in golden I/O


@dataclass(frozen=True)
class GoldenCase:
    name: str
    batch: int
    iterations: int
    int8_gated: bool
    # the images' labels where the gate's case had them and none repeats: the box then judges
    # top-1 by the paired accuracy drop, as the gate did (attnvgg_runtime.verify.budgets)
    labels: list[int] | None = None

    def to_json(self) -> dict:
        return self.__dict__.copy()


def golden_cases(cases: dict, references: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The gate's cases as golden I/O holds them: a case that also stands for a corner (the
    held-out images run at the max batch: attnvgg_export.verify.cases, ``stands_for``) is written as
    two, the held-out images at GOLDEN_BATCH and that corner as one batch of them, so that a box
    re-checks both shapes on few images."""
    split, outputs = {}, {}
    for name, case in cases.items():
        corner = getattr(case, "stands_for", None)
        if not corner:
            split[name], outputs[name] = case, references[name]
            continue
        split[name] = replace(case, batch=min(GOLDEN_BATCH, case.batch), stands_for=None)
        outputs[name] = references[name]
        labels = None if case.labels is None else case.labels[:case.batch]
        split[corner] = replace(case, images=case.images[:case.batch], labels=labels, stands_for=None)
        outputs[corner] = references[name][:case.batch]
    return split, outputs


def golden_selection(cases: dict) -> dict[str, int]:
    """How many images of each of the gate's cases (attnvgg_export.verify.cases) go into golden/: whole
    batches of the case's size."""
    chosen = {}
    for name, case in cases.items():
        wanted = OPT_IMAGES if name == "heldout" else CORNER_IMAGES
        chosen[name] = case.batch * max(1, -(-min(wanted, len(case.images)) // case.batch))
    return chosen


def write_golden(root: Path, cases: dict, references: dict[str, np.ndarray]) -> dict:
    """golden/inputs.json and golden/outputs.json beside the manifest; returns the manifest's
    ``golden`` record (files with sha256 and bytes, and the cases)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from polygraphy.comparator import IterationResult, RunResults  # its logger talks at import
        from polygraphy.json import save_json
        from polygraphy.logger import G_LOGGER

    cases, references = golden_cases(cases, references)
    feeds, results, record = [], [], []
    for name, count in golden_selection(cases).items():
        case = cases[name]
        images = np.resize(case.images, (count, *case.images.shape[1:])) if count > len(case.images) \
            else case.images[:count]
        outputs = np.resize(references[name], (count, references[name].shape[1])) \
            if count > len(references[name]) else references[name][:count]
        for start in range(0, count, case.batch):
            feeds.append({"input": np.ascontiguousarray(images[start:start + case.batch])})
            results.append(IterationResult({"logits": outputs[start:start + case.batch]},
                                           runner_name=GOLDEN_RUNNER))
        unrepeated = case.labels is not None and count <= len(case.images)
        labels = [int(v) for v in case.labels[:count]] if unrepeated else None
        record.append(GoldenCase(name, case.batch, count // case.batch, case.int8_gated, labels).to_json())
    folder = Path(root) / GOLDEN_DIR
    folder.mkdir(exist_ok=True)
    files = {}
    for key, data in (("inputs", feeds), ("outputs", RunResults([(GOLDEN_RUNNER, results)]))):
        path = folder / f"{key}.json"
        with atomic_path(path) as tmp, G_LOGGER.verbosity(G_LOGGER.ERROR):
            save_json(data, str(tmp), description=f"golden {key}")
        files[key] = {"path": f"{GOLDEN_DIR}/{key}.json", "bytes": path.stat().st_size,
                      "sha256": sha256_file(path)}
    return {"runner": GOLDEN_RUNNER, **files, "cases": record}


def _decode(value):
    if isinstance(value, dict):
        kind = value.get("polygraphy_class")
        if kind == "ndarray":
            return np.load(io.BytesIO(base64.b64decode(value["array"])), allow_pickle=False)
        if kind in ("LazyArray", "LazyNumpyArray"):  # an IterationResult's arrays
            return _decode(value["values"])
        return {k: _decode(v) for k, v in value.items() if k != "polygraphy_class"}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def read_golden(root: Path, record: dict) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """case name -> (its input batches, eager's outputs for them, concatenated), from the files
    the manifest's ``golden`` record lists, refused where their sha256 differs. (The cases'
    labels, where recorded, are in the record: ``cases[i]["labels"]``.)"""
    texts = {}
    for key in ("inputs", "outputs"):
        path = inside_build(root, record[key]["path"], f"golden {key}")
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != record[key]["sha256"]:
            raise ManifestError(f"{path} is missing or is not the golden file the build wrote "
                                f"(sha256 differs); rebuild with `make engine`")
        texts[key] = data
    try:
        feeds = _decode(json.loads(texts["inputs"]))
        runs = _decode(json.loads(texts["outputs"]))["lst"]
    except (ValueError, KeyError, TypeError) as e:  # np.load refuses pickled objects: ValueError
        raise ManifestError(f"golden I/O of {root} cannot be read as the build writes it ({e}); "
                            f"rebuild with `make engine`") from None
    iterations = dict(runs)[record["runner"]]
    golden, start = {}, 0
    for case in record["cases"]:
        stop = start + case["iterations"]
        batches = [feed["input"] for feed in feeds[start:stop]]
        outputs = np.concatenate([it["outputs"]["logits"] for it in iterations[start:stop]])
        golden[case["name"]] = (batches, outputs)
        start = stop
    return golden
