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

A gate whose process has not imported torch (`make parity`, `attnvgg-export parity`) computes
them in a child Python (``computed_apart``; ``python -m attnvgg_export.verify.references``):
torch, the model and what eager's batches leave on the heap then never share the gate's process
with its reader sessions, so a gate that computes them peaks where one that reads them does
(docs/toolchain.md, "What the gate costs"). Where torch is imported already, they are computed
in process.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np

from attnvgg_export.models import ToolchainError
from attnvgg_export.verify.cases import CASES_RULE, ShapeCase
from attnvgg_runtime.files import atomic_path
from attnvgg_runtime.manifest import Manifest, inside_build, read_manifest, sha256_file
from attnvgg_runtime.readers import run_batches

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
    path = inside_build(root, REFERENCES_FILE, "eager's references")  # a symlink out is refused
    if not record or not path.is_file() or record.get("key") != _canonical(reference_key(manifest)):
        return None
    if sha256_file(path) != record["sha256"]:
        return None
    return _load(path)


def _load(path: Path) -> GateReferences:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        cases, references = {}, {}
        for case in meta["cases"]:
            name = case.pop("name")
            labels = data[f"{name}.labels"] if case.pop("has_labels") else None
            cases[name] = ShapeCase(data[f"{name}.images"], labels, **case)
            if f"{name}.reference" in data.files:
                references[name] = data[f"{name}.reference"]
    return GateReferences(meta["heldout"], cases, references)


def write_references(root: Path, manifest: Manifest, stored: GateReferences) -> None:
    """Writes the file and records it (key, sha256) in ``manifest``, which the gate publishes."""
    path = _save(Path(root) / REFERENCES_FILE, stored)
    manifest.parity[RECORD_KEY] = {"file": REFERENCES_FILE, "sha256": sha256_file(path),
                                   "key": _canonical(reference_key(manifest))}


def _save(path: Path, stored: GateReferences) -> Path:
    arrays, cases = {}, []
    for name, case in stored.cases.items():
        arrays[f"{name}.images"] = case.images
        if name in stored.references:  # a gate on chosen cases computes only theirs
            arrays[f"{name}.reference"] = stored.references[name]
        if case.labels is not None:
            arrays[f"{name}.labels"] = case.labels
        fields = {f.name: getattr(case, f.name) for f in dataclasses.fields(case)
                  if f.name not in ("images", "labels")}
        cases.append({"name": name, "has_labels": case.labels is not None, **fields})
    meta = json.dumps({"heldout": stored.heldout, "cases": cases})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(meta), **arrays)
    return path


def eager_references(manifest: Manifest, images: int | None, cases: set[str] | None,
                     thorough: bool = False) -> GateReferences:
    """The held-out set rebuilt from the manifest's record (its first ``images``), its cases, and
    eager's outputs on them (on the chosen ``cases`` and the held-out one only, where given).
    torch is imported here."""
    from attnvgg_export.calibration.data import NOISE
    from attnvgg_export.runtime.eager import model_from_manifest, run_torch
    from attnvgg_export.verify.cases import heldout_images, shape_cases

    heldout = heldout_images(manifest)
    if images is not None:
        heldout = heldout.first(images)
    all_cases = shape_cases(manifest.dynamic, heldout, noise=manifest.data_split["source"] == NOISE,
                            thorough=thorough)
    model = model_from_manifest(manifest)
    references = {name: run_batches(partial(run_torch, model), case.images, case.batch)
                  for name, case in all_cases.items() if cases is None or name in cases | {"heldout"}}
    return GateReferences({"images": len(heldout), "distinct_sources": heldout.distinct_sources(),
                           "source": heldout.source, "ids_sha256": heldout.ids_sha256()},
                          all_cases, references)


def computed_apart(manifest_path: Path, images: int | None, cases: set[str] | None,
                   thorough: bool = False) -> GateReferences:
    """``eager_references`` for the build at ``manifest_path``, computed in a child Python and
    handed back through a temporary file. An error of the toolchain's there (a changed
    checkpoint, a bad setting) is raised here as the same class with the same message."""
    with tempfile.TemporaryDirectory(prefix="eager-references-") as tmp:
        out, error = Path(tmp) / REFERENCES_FILE, Path(tmp) / "error.json"
        request = json.dumps({"images": images, "cases": sorted(cases) if cases is not None else None,
                              "thorough": thorough})
        done = subprocess.run([sys.executable, "-m", __name__, str(manifest_path), str(out), str(error),
                               request], check=False)
        if error.is_file():
            raise forwarded_error(json.loads(error.read_text()))
        if done.returncode != 0 or not out.is_file():
            raise ToolchainError(f"eager PyTorch's references for {manifest_path} failed in their "
                                 f"process (exit {done.returncode}; its output is above)")
        return _load(out)


def forwarded_error(raised: dict) -> ToolchainError:
    """The child's error as the toolchain class it was raised as. A name that is not one of the
    toolchain's errors (an edited record, a class since renamed) is not imported blindly: it is a
    ToolchainError whose message names it."""
    try:
        cls = getattr(importlib.import_module(raised["module"]), raised["class"])
    except (ImportError, AttributeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, ToolchainError):
        return cls(raised["message"])
    return ToolchainError(f"{raised['module']}.{raised['class']} (not a toolchain error) in eager's "
                          f"process: {raised['message']}")


def _child(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="eager's references for the gate, in a process of their own")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("error", type=Path)
    parser.add_argument("request")
    args = parser.parse_args(argv)
    request = json.loads(args.request)
    try:
        stored = eager_references(read_manifest(args.manifest), request["images"],
                                  set(request["cases"]) if request["cases"] is not None else None,
                                  request["thorough"])
    except ToolchainError as e:  # ConfigError, ManifestError and the others: raised again there
        args.error.write_text(json.dumps({"module": type(e).__module__, "class": type(e).__name__,
                                          "message": str(e)}))
        raise SystemExit(2) from None
    _save(args.out, stored)


def _canonical(key: dict) -> dict:
    """The key as it reads back from the manifest's JSON (tuples become lists)."""
    return json.loads(json.dumps(key))


if __name__ == "__main__":
    _child()
