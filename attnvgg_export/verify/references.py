"""Eager PyTorch's outputs on the gate's cases, computed once per model and kept beside the
manifest (eager-references.npz), so that a gate run on an unchanged model (`make parity` after
`make engine`, a CI re-run, a changed TOLERANCES file) reads them instead of importing torch
and running eager again: torch and torchvision alone hold ~660 MB of a process's memory, and
with them gone every reader session runs in what is left (docs/toolchain.md, "The gate's cost").

The file holds the cases' inputs as well as eager's outputs: what the gate judges against is
exactly what eager computed on exactly those inputs. It is used only where its key matches the
build: the model (the manifest's model record and the sha256 of its fp32 graph), the held-out
split's record (which images, by the sha256 of their identities), the declared range and the
preprocessing, the rule that made the cases (CASES_RULE) and the torch version that computed
them; and where its own sha256 is the one the manifest records. Anything else computes them
again with eager and rewrites the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from attnvgg_export.verify.cases import CASES_RULE, ShapeCase
from attnvgg_runtime.files import atomic_path
from attnvgg_runtime.manifest import Manifest, sha256_file

REFERENCES_FILE = "eager-references.npz"
RECORD_KEY = "eager-references"  # under the manifest's `parity`


@dataclass(frozen=True)
class GateReferences:
    """The gate's cases, eager's outputs for each, and what the held-out set was."""
    heldout: dict  # images, distinct_sources, source, ids_sha256 (parity.json's `heldout`)
    cases: dict[str, ShapeCase]
    references: dict[str, np.ndarray]


def reference_key(manifest: Manifest) -> dict:
    """What eager's outputs on the cases depend on."""
    fp32 = next(a for a in manifest.artifacts if a.precision == "fp32" and a.format == "onnx")
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {"model": manifest.model, "fp32_graph_sha256": fp32.sha256, "data_split": manifest.data_split,
            "dynamic": manifest.dynamic, "preprocessing": manifest.preprocessing, "cases_rule": CASES_RULE,
            "torch": torch_version}


def read_references(root: Path, manifest: Manifest) -> GateReferences | None:
    """The stored references where they are this build's (key and sha256 as recorded), else None."""
    record = manifest.parity.get(RECORD_KEY)
    path = Path(root) / REFERENCES_FILE
    if not record or not path.is_file() or record.get("key") != _canonical(reference_key(manifest)):
        return None
    if sha256_file(path) != record["sha256"]:
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        cases, references = {}, {}
        for case in meta["cases"]:
            name = case.pop("name")
            labels = data[f"{name}.labels"] if case.pop("has_labels") else None
            cases[name] = ShapeCase(data[f"{name}.images"], labels, **case)
            references[name] = data[f"{name}.reference"]
    return GateReferences(meta["heldout"], cases, references)


def write_references(root: Path, manifest: Manifest, stored: GateReferences) -> None:
    """Writes the file and records it (key, sha256) in ``manifest``, which the gate publishes."""
    arrays, cases = {}, []
    for name, case in stored.cases.items():
        arrays[f"{name}.images"] = case.images
        arrays[f"{name}.reference"] = stored.references[name]
        if case.labels is not None:
            arrays[f"{name}.labels"] = case.labels
        fields = {f.name: getattr(case, f.name) for f in dataclasses.fields(case)
                  if f.name not in ("images", "labels")}
        cases.append({"name": name, "has_labels": case.labels is not None, **fields})
    meta = json.dumps({"heldout": stored.heldout, "cases": cases})
    path = Path(root) / REFERENCES_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(meta), **arrays)
    manifest.parity[RECORD_KEY] = {"file": REFERENCES_FILE, "sha256": sha256_file(path),
                                   "key": _canonical(reference_key(manifest))}


def _canonical(key: dict) -> dict:
    """The key as it reads back from the manifest's JSON (tuples become lists)."""
    return json.loads(json.dumps(key))
