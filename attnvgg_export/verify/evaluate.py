"""The gate's accuracy check on EVAL_DIR, the user's labelled images: eager fp32 once, then each
artifact with the runner the gate already loaded for it, streamed over the set a batch at a time
and judged by its paired drop against eager with its 95% interval
(attnvgg_runtime.verify.accuracy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from attnvgg_runtime.manifest import Manifest
from attnvgg_runtime.verify.accuracy import class_moves, judge_drop
from attnvgg_runtime.verify.findings import Finding, error_margin

if TYPE_CHECKING:  # torch and torchvision are imported where eager runs (gate: references.py)
    from attnvgg_export.calibration.evaluation import EvalSet
    from attnvgg_export.calibration.preprocessing import Preprocessing

EVAL_BATCH = 32
EVAL_CASE = "EVAL_DIR"  # the case a finding on the labelled evaluation set names


@dataclass
class LabelledReference:
    """EVAL_DIR and eager fp32's logits on it: what every artifact is judged against."""

    images: EvalSet
    preprocessing: Preprocessing
    batch: int
    eager: np.ndarray
    labels: np.ndarray
    record: dict  # what the set was, for parity.json

    def logits(self, run, desc: str) -> np.ndarray:
        return _run_over(self.images, self.preprocessing, self.batch, run, desc)[0]


def _run_over(eval_set: EvalSet, pre: Preprocessing, batch: int, run,
              desc: str) -> tuple[np.ndarray, np.ndarray]:
    """``run``'s outputs over the set, streamed a batch at a time, and the labels decoded."""
    outputs, labels = [], []
    for x, y in tqdm(eval_set.batches(pre, batch), desc=desc, unit="batch", leave=False,
                     total=-(-len(eval_set) // batch)):
        outputs.append(run(x))
        labels.append(y)
    return np.concatenate(outputs), np.concatenate(labels)


def eager_on_labels(eval_dir: str | Path, manifest: Manifest, model, log=print) -> LabelledReference:
    from attnvgg_export.calibration.evaluation import load_eval_set
    from attnvgg_export.calibration.preprocessing import Preprocessing
    from attnvgg_export.runtime.eager import run_torch

    eval_set = load_eval_set(eval_dir, manifest.num_classes, manifest.labels)
    pre = Preprocessing.from_json(manifest.preprocessing)
    batch = min(EVAL_BATCH, manifest.dynamic["batch"]["max"])
    eager, labels = _run_over(eval_set, pre, batch, lambda x: run_torch(model, x),
                              "eager on EVAL_DIR")
    record = {"source": str(eval_dir), "images": len(labels), "classes": len(eval_set.class_names),
              "ids_sha256": eval_set.ids_sha256(), "skipped": list(eval_set.skipped),
              "eager_top1": float((eager.argmax(1) == labels).mean())}
    if eval_set.skipped:
        log(f"EVAL_DIR: skipped {len(eval_set.skipped)} undecodable files, first: "
            f"{eval_set.skipped[0]}")
    log(f"accuracy on EVAL_DIR {eval_dir}: {len(labels)} labelled images in "
        f"{record['classes']} classes; eager fp32 top-1 {100 * record['eager_top1']:.2f}%")
    return LabelledReference(eval_set, pre, batch, eager, labels, record)


def judge_on_labels(entry, runner, reference: LabelledReference, budget: dict, log=print,
                    strict: bool = False) -> None:
    """Sets ``entry.accuracy``, and a failure where drop_verdict fails the drop (over budget with
    confidence, or by a point estimate these images resolve). A drop these images cannot
    resolve either way is a warning, with about how many images would resolve it, and fails
    only where ``strict`` (STRICT_ACCURACY=1): more evidence must not turn a passing build into a
    failing one unless it points to a breach."""
    logits = reference.logits(runner, entry.label)
    judged = judge_drop(logits, reference.eager, reference.labels, budget["accuracy_drop_max"])
    entry.accuracy = judged.to_json() | {"moves": class_moves(logits, reference.eager, reference.labels)}
    unresolved = judged.verdict == "not resolvable" and not judged.fails
    if judged.fails or (strict and unresolved):
        entry.failures.append(Finding(
            "accuracy_drop_max", judged.describe()
            + ("; failed as STRICT_ACCURACY asks" if not judged.fails else ""), case=EVAL_CASE,
            measured=judged.drop, budget=judged.budget, margin=error_margin(judged.drop, judged.budget)))
    elif unresolved:
        entry.warnings.append(f"accuracy on EVAL_DIR: {judged.warning} (STRICT_ACCURACY=1 fails it)")
    log(f"  {entry.label}: {judged.describe()}"
        + (" -- NOT RESOLVED: more labelled images would settle it" if unresolved else ""))
