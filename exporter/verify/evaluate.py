"""The gate's accuracy check on EVAL_DIR, the user's labelled images: eager fp32 and every
artifact the gate could load, streamed over the set a batch at a time, each judged by its paired
drop against eager with an exact 95% interval (exporter.verify.accuracy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from calibration.evaluation import load_eval_set
from calibration.preprocessing import Preprocessing
from exporter.runtime.eager import run_torch
from exporter.verify.accuracy import class_moves, judge_drop
from exporter.verify.readers import runner_for

EVAL_BATCH = 32


def _logits(run, eval_set, pre: Preprocessing, batch: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    outputs, labels = [], []
    for images, y in tqdm(eval_set.batches(pre, batch), desc=desc, unit="batch", leave=False,
                          total=-(-len(eval_set) // batch)):
        outputs.append(run(images))
        labels.append(y)
    return np.concatenate(outputs), np.concatenate(labels)


def evaluate_on_labels(eval_dir: str | Path, manifest: dict, root: Path, model, entries: list,
                       budgets: dict, log=print) -> dict:
    """Sets each judged entry's ``accuracy`` (and a failure where the drop is over budget, or
    cannot be resolved with these images); returns what the set was, for parity.json."""
    eval_set = load_eval_set(eval_dir, manifest["num_classes"], manifest.get("labels"))
    pre = Preprocessing.from_json(manifest["preprocessing"])
    batch = min(EVAL_BATCH, manifest["dynamic"]["batch"]["max"])
    eager, labels = _logits(lambda x: run_torch(model, x), eval_set, pre, batch, "eager on EVAL_DIR")
    record = {"source": str(eval_dir), "images": len(labels), "classes": len(eval_set.class_names),
              "ids_sha256": eval_set.ids_sha256(), "skipped": list(eval_set.skipped),
              "eager_top1": float((eager.argmax(1) == labels).mean())}
    if eval_set.skipped:
        log(f"EVAL_DIR: skipped {len(eval_set.skipped)} undecodable files, first: "
            f"{eval_set.skipped[0]}")
    log(f"accuracy on EVAL_DIR {eval_dir}: {len(labels)} labelled images in "
        f"{record['classes']} classes; eager fp32 top-1 {100 * record['eager_top1']:.2f}%")
    artifacts = {a["path"]: a for a in manifest["artifacts"]}
    for entry in entries:
        if entry.skipped or "heldout" not in entry.cases:  # not computable here, or did not load
            continue
        runner = runner_for(artifacts[entry.path], root, manifest, entry.reader)
        logits, _ = _logits(runner, eval_set, pre, batch, entry.label)
        judged = judge_drop(logits, eager, labels, budgets[entry.precision]["accuracy_drop_max"])
        entry.accuracy = judged.to_json() | {"moves": class_moves(logits, eager, labels)}
        if judged.verdict != "within budget":
            entry.failures.append(f"accuracy on EVAL_DIR: {judged.describe()}")
        log(f"  {entry.label}: {judged.describe()}")
    return record
