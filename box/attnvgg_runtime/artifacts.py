"""A build's CPU artifacts as a runtime on this box loads them: which runtime serves which,
and each one loaded with its sha256 checked, read as the gate reads it."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.manifest import (
    Artifact,
    ArtifactFile,
    Manifest,
    ManifestError,
    inside_build,
    read_manifest,
)
from attnvgg_runtime.metadata import (
    check_metadata,
    ir_metadata,
    onnx_metadata,
    session_metadata,
    with_frames,
)


class ArtifactChanged(ToolchainError):
    """An artifact's bytes are not those the manifest lists."""


class ArtifactUnreadable(ToolchainError):
    """The runtime cannot load an artifact whose bytes are the ones the manifest lists."""


# runtime -> (the manifest target it serves, the formats it reads)
RUNTIMES = {"onnxruntime": ("onnxruntime-cpu", ("ort", "onnx")),
            "openvino": ("openvino-cpu", ("openvino-ir",))}


def installed_runtimes() -> list[str]:
    return [r for r in RUNTIMES if importlib.util.find_spec(r)]


def runnable(manifest: Manifest, runtime: str) -> list[Artifact]:
    """The artifacts ``runtime`` serves (its target, or any), in the formats it reads."""
    target, formats = RUNTIMES[runtime]
    return [a for a in manifest.artifacts if a.format in formats and a.target in (target, "any")]


def verified_bytes(manifest_path: Path, item: Artifact | ArtifactFile) -> bytes:
    """The file's bytes, read once from inside the build folder and checked against the
    manifest's sha256: the runtime is handed these very bytes, never the path again."""
    path = inside_build(Path(manifest_path).parent, item.path, str(manifest_path))
    if not path.is_file():
        raise ManifestError(f"{path}, listed in {manifest_path}, is missing: copy the whole build "
                            f"folder to this box")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise ArtifactChanged(f"{path} does not match the sha256 in the manifest: it was changed "
                              f"or damaged after the build; refusing to run it")
    return data


def load_runner(manifest_path: Path, artifact: Artifact, runtime: str, cache_dir: Path | None = None):
    """A callable batch -> logits for the artifact, made from the bytes whose sha256 was checked
    (an IR's weights too), read as the gate reads it (attnvgg_runtime.readers: exact int8 where
    this CPU's pair sums saturate and the manifest asks for it, the bf16 entry's precision hint).
    ``cache_dir``: OpenVINO's model cache (compiled models kept there, read back on a later load)."""
    data = verified_bytes(manifest_path, artifact)
    weights = verified_bytes(manifest_path, artifact.weights) if runtime == "openvino" else None
    manifest = read_manifest(manifest_path)
    if artifact.format in ("onnx", "openvino-ir"):  # an .ort's: its session's, below
        check_metadata((onnx_metadata if artifact.format == "onnx" else ir_metadata)(data), manifest,
                       artifact, str(manifest_path))
    try:
        if runtime == "openvino":
            from attnvgg_runtime.readers.openvino import OpenVinoRunner, precision_hint

            runner = OpenVinoRunner((data, weights), precision_hint(artifact), cache_dir=cache_dir)
        else:
            from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner

            runner = OnnxRuntimeRunner(data, exact_int8=artifact.exact_int8_session_options is not None)
    except ToolchainError:
        raise
    except Exception as e:  # the runtime's own error: the file is not a model it reads
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ArtifactUnreadable(
            f"{artifact.path}, listed in {manifest_path}, has the listed sha256 but {runtime} cannot "
            f"load it ({type(e).__name__}: {reason}): "
            f"the build wrote a file this runtime does not read; rebuild it with `make engine`, or "
            f"use another runtime (--runtime)") from None
    if artifact.format == "ort":
        check_metadata(session_metadata(runner.session), manifest, artifact, str(manifest_path))
    return with_frames(runner, artifact, manifest)
