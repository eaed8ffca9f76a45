"""A build's CPU artifacts as a runtime on this box loads them: which runtime serves which,
and each one loaded with its sha256 checked, read as the gate reads it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.files import sha256_file
from attnvgg_runtime.manifest import Artifact, ArtifactFile, Manifest, ManifestError


class ArtifactChanged(ToolchainError):
    """An artifact's bytes are not those the manifest lists."""


# runtime -> (the manifest target it serves, the formats it reads)
RUNTIMES = {"onnxruntime": ("onnxruntime-cpu", ("ort", "onnx")),
            "openvino": ("openvino-cpu", ("openvino-ir",))}


def installed_runtimes() -> list[str]:
    return [r for r in RUNTIMES if importlib.util.find_spec(r)]


def runnable(manifest: Manifest, runtime: str) -> list[Artifact]:
    """The artifacts ``runtime`` serves (its target, or any), in the formats it reads."""
    target, formats = RUNTIMES[runtime]
    return [a for a in manifest.artifacts if a.format in formats and a.target in (target, "any")]


def verified_path(manifest_path: Path, item: Artifact | ArtifactFile) -> Path:
    path = Path(manifest_path).parent / item.path
    if not path.is_file():
        raise ManifestError(f"{path}, listed in {manifest_path}, is missing: copy the whole build "
                            f"folder to this box")
    if sha256_file(path) != item.sha256:
        raise ArtifactChanged(f"{path} does not match the sha256 in the manifest: it was changed "
                          f"or damaged after the build; refusing to run it")
    return path


def load_runner(manifest_path: Path, artifact: Artifact, runtime: str):
    """A callable batch -> logits for the artifact, sha256 checked (an IR's weights too), read
    as the gate reads it (attnvgg_runtime.readers: exact int8 where this CPU's pair sums saturate
    and the manifest asks for it, the bf16 entry's precision hint)."""
    path = verified_path(manifest_path, artifact)
    if runtime == "openvino":
        from attnvgg_runtime.readers.openvino import OpenVinoRunner, precision_hint

        verified_path(manifest_path, artifact.weights)
        return OpenVinoRunner(path, precision_hint(artifact))
    from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, exact_int8=artifact.exact_int8_session_options is not None)
