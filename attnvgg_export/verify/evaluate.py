"""The gate's accuracy check on EVAL_DIR, the user's labelled images: every reading the gate
loaded, and eager fp32, over the set a batch (a ``Unit``) at a time, each image's top-5 kept in
the result store (attnvgg_export.verify.results), then each reading judged by its paired drop
against eager with its 95% interval (attnvgg_runtime.verify.accuracy).

Where it runs: in this process by default (one reader session at a time), or on a Ray cluster
where one is named (``RAY_ADDRESS``, or ``EVAL_CLUSTER=auto`` for a local one: the ``ray``
extra, attnvgg_export.verify.cluster). Both read each unit with ``read_unit`` and write the same
store; the verdicts are computed from the store alone, so they are the same wherever the images
were read, and an evaluation stopped half-way resumes at the first unit it had not stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from attnvgg_export.verify.reading import RunnerSpec, cpu_key, eager_identity, make_runner, read_unit
from attnvgg_export.verify.results import STORE_FILE, ImageResult, Reading, ResultStore
from attnvgg_runtime.manifest import Manifest
from attnvgg_runtime.readers import reader_version, release_memory
from attnvgg_runtime.verify.accuracy import judge_correct, moves_of
from attnvgg_runtime.verify.findings import Finding, error_margin

if TYPE_CHECKING:  # torch and torchvision are imported where eager runs
    from attnvgg_export.calibration.evaluation import EvalSet, Unit
    from attnvgg_export.calibration.preprocessing import Preprocessing

EVAL_BATCH = 32
EVAL_CASE = "EVAL_DIR"  # the case a finding on the labelled evaluation set names
EAGER = "eager PyTorch fp32"


def eager_reading(manifest: Manifest) -> Reading:
    return Reading(EAGER, None, "eager", eager_identity(manifest), reader_version("eager"))


def artifact_reading(manifest: Manifest, path: str, reader: str) -> Reading:
    return Reading(f"{path} [{reader}]", path, reader, manifest.artifact(path).sha256,
                   reader_version(reader))


@dataclass
class LabelledSet:
    """EVAL_DIR as the gate plans it: the set (each image identified), its preprocessing and batch."""

    eval_set: EvalSet
    preprocessing: Preprocessing
    preprocessing_sha256: str
    batch: int
    store: Path

    def units(self) -> list[Unit]:
        return self.eval_set.units(self.batch)


def labelled_set(eval_dir: str | Path, manifest: Manifest, root: Path, store: str | Path | None = None,
                 log=print) -> LabelledSet:
    from attnvgg_export.calibration.evaluation import load_eval_set
    from attnvgg_export.calibration.preprocessing import Preprocessing
    from attnvgg_export.verify.results import preprocessing_sha256

    eval_set = load_eval_set(eval_dir, manifest.num_classes, manifest.labels)
    eval_set.identify()
    store = Path(store or os.environ.get("EVAL_STORE") or root / STORE_FILE)
    log(f"EVAL_DIR {eval_dir}: {len(eval_set)} labelled images; per-image results kept in {store}")
    return LabelledSet(eval_set, Preprocessing.from_json(manifest.preprocessing),
                       preprocessing_sha256(manifest.preprocessing),
                       min(EVAL_BATCH, manifest.dynamic["batch"]["max"]), store)


class Progress:
    """Images read across every worker: images/s and an ETA over what is left to read."""

    def __init__(self, total: int, where: str):
        self.bar = tqdm(total=total, unit="image", desc=f"EVAL_DIR ({where})", leave=False,
                        dynamic_ncols=True, mininterval=1.0)

    def reading(self, label: str) -> None:
        self.bar.set_postfix_str(label, refresh=False)

    def done(self, images: int) -> None:
        self.bar.update(images)

    def close(self) -> None:
        self.bar.close()


def run_in_process(spec: RunnerSpec, units: list[Unit], pre: Preprocessing,
                   on_unit: Callable[[Unit, list[ImageResult], str], None]) -> None:
    """The default: one session in this process, every unit in order, then let go."""
    runner = make_runner(spec)
    cpu = cpu_key(spec.threads)
    for unit in units:
        on_unit(unit, read_unit(runner, unit, pre), cpu)
    del runner
    release_memory()


def evaluate_readings(manifest_path: Path, labelled: LabelledSet, readings: Iterable[Reading],
                      cluster: str | None = None, log=print) -> list[str]:
    """Reads every unit each reading has not stored yet (on this CPU, or the cluster's) and stores
    it, a unit at a time. Returns the CPUs whose results count."""
    readings = list(readings)
    units = labelled.units()
    backend = None
    if cluster:
        from attnvgg_export.verify.cluster import RayCluster

        backend = RayCluster(cluster, log)
        cpus = backend.cpus
    else:
        cpus = [cpu_key()]
    with ResultStore(labelled.store) as store:
        pending = {}
        for reading in readings:
            done = store.results(reading, cpus, labelled.preprocessing_sha256)
            pending[reading] = [u for u in units if not all(s in done for s in u.image_sha256)]
        total = sum(len(u.entries) for todo in pending.values() for u in todo)
        stored = len(readings) * len(labelled.eval_set) - total
        log(f"EVAL_DIR: {len(readings)} readings x {len(labelled.eval_set)} images; "
            f"{stored} results already stored, {total} to read "
            f"{'on ' + backend.describe() if backend else 'in this process'}")
        progress = Progress(total, backend.describe() if backend else "in process")

        def on_unit(unit: Unit, results: list[ImageResult], cpu: str) -> None:
            store.add(reading, cpu, labelled.preprocessing_sha256, results)
            progress.done(len(results))

        try:
            for reading, todo in pending.items():
                if not todo:
                    continue
                progress.reading(reading.label)
                spec = RunnerSpec(str(manifest_path), reading)
                if backend:
                    backend.run(spec, todo, labelled.preprocessing, on_unit)
                else:
                    run_in_process(spec, todo, labelled.preprocessing, on_unit)
        finally:
            progress.close()
            if backend:
                backend.close()
    return cpus


def stored_results(store: ResultStore, reading: Reading, labelled: LabelledSet,
                   cpus: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-1 right, top-5 right, decoded) per entry of the set, from the store; an entry with no
    result is an error (the evaluation did not finish), never a pass."""
    found = store.results(reading, cpus, labelled.preprocessing_sha256)
    labels = labelled.eval_set.labels
    missing = [sha for sha in labelled.eval_set.image_sha256 if sha not in found]
    if missing:
        raise RuntimeError(f"{reading.label}: {len(missing)} of {len(labels)} EVAL_DIR images have no "
                           f"stored result in {labelled.store}; run the evaluation again (it resumes)")
    rows = [found[sha] for sha in labelled.eval_set.image_sha256]
    ok = np.array([r.top5 is not None for r in rows])
    top5 = [r.top5 or () for r in rows]
    correct1 = np.array([bool(t) and t[0] == y for t, y in zip(top5, labels, strict=True)])
    correct5 = np.array([y in t for t, y in zip(top5, labels, strict=True)])
    return correct1, correct5, ok


@dataclass
class LabelledEvaluation:
    """What the gate records and judges: the set's record and eager's per-image correctness."""

    labelled: LabelledSet
    cpus: list[str]
    eager1: np.ndarray
    eager5: np.ndarray
    decoded: np.ndarray
    record: dict


def evaluate_eager(manifest_path: Path, manifest: Manifest, labelled: LabelledSet, readings: list[Reading],
                   cluster: str | None, log=print) -> LabelledEvaluation:
    """Reads (or finds stored) eager and ``readings`` on the set; eager's figures and the record."""
    eager = eager_reading(manifest)
    cpus = evaluate_readings(manifest_path, labelled, [eager, *readings], cluster, log)
    with ResultStore(labelled.store) as store:
        eager1, eager5, decoded = stored_results(store, eager, labelled, cpus)
    eval_set = labelled.eval_set
    skipped = [f"{eval_set.entry_id(i)} ({eval_set.why_skipped(i)})" for i in np.flatnonzero(~decoded)]
    record = {"source": eval_set.source, "images": int(decoded.sum()), "classes": len(eval_set.class_names),
              "ids_sha256": eval_set.ids_sha256(decoded), "skipped": skipped,
              "eager_top1": float(eager1[decoded].mean()) if decoded.any() else 0.0,
              "store": str(labelled.store), "cpus": cpus,
              "where": cluster_name(cluster)}
    if skipped:
        log(f"EVAL_DIR: skipped {len(skipped)} unreadable files, first: {skipped[0]}")
    if not decoded.any():
        raise RuntimeError(f"EVAL_DIR {eval_set.source}: no image could be decoded; a check that read "
                           f"nothing cannot pass")
    log(f"accuracy on EVAL_DIR {eval_set.source}: {record['images']} labelled images in "
        f"{record['classes']} classes; eager fp32 top-1 {100 * record['eager_top1']:.2f}%")
    return LabelledEvaluation(labelled, cpus, eager1, eager5, decoded, record)


def cluster_name(cluster: str | None) -> str:
    if not cluster:
        return "in process"
    return "a local Ray cluster" if cluster == "local" else f"Ray at {cluster}"


def judge_on_labels(entry, reading: Reading, evaluation: LabelledEvaluation, budget: dict, log=print,
                    strict: bool = False) -> None:
    """Sets ``entry.accuracy``, and a failure where drop_verdict fails the drop (over budget with
    confidence, or by a point estimate these images resolve). A drop these images cannot
    resolve either way is a warning, with about how many images would resolve it, and fails
    only where ``strict`` (STRICT_ACCURACY=1): more evidence must not turn a passing build into a
    failing one unless it points to a breach."""
    with ResultStore(evaluation.labelled.store) as store:
        correct1, correct5, decoded = stored_results(store, reading, evaluation.labelled, evaluation.cpus)
        cpus = store.cpus_of(reading, evaluation.cpus, evaluation.labelled.preprocessing_sha256,
                             evaluation.labelled.eval_set.image_sha256)
    both = decoded & evaluation.decoded
    judge_results(entry, correct1[both], correct5[both], evaluation.eager1[both], evaluation.eager5[both],
                  evaluation.labelled.eval_set.labels[both], budget, log, strict)
    entry.accuracy["cpus"] = cpus
    if len(cpus) > 1:
        entry.warnings.append(f"accuracy on EVAL_DIR: its results were computed on {len(cpus)} CPU "
                              f"models ({', '.join(cpus)}), whose kernels may differ")


def judge_results(entry, correct1, correct5, eager1, eager5, labels, budget: dict, log=print,
                  strict: bool = False) -> None:
    judged = judge_correct(correct1, correct5, eager1, eager5, budget["accuracy_drop_max"])
    entry.accuracy = judged.to_json() | {"moves": moves_of(correct1, eager1, labels)}
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


def evaluate_gate_readings(manifest_path: Path, manifest: Manifest, labelled: LabelledSet, entries: list,
                           cluster: str | None, strict: bool, log=print) -> dict:
    """The gate's EVAL_DIR step: every reading the gate loaded (``entries``: ArtifactParity with
    no skip and no load failure) evaluated, judged, and the set's record returned."""
    loaded = [e for e in entries if e.skipped is None and not any(f.check == "loads" for f in e.failures)]
    readings = {e.label: artifact_reading(manifest, e.path, e.reader) for e in loaded}
    evaluation = evaluate_eager(manifest_path, manifest, labelled, list(readings.values()), cluster, log)
    for entry in loaded:
        judge_on_labels(entry, readings[entry.label], evaluation, entry.budget, log, strict)
    return evaluation.record
