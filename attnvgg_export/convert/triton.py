"""Stage: a Triton Inference Server model repository from a build (`make triton`).

One model per artifact: ONNX graphs on the onnxruntime backend, plans on tensorrt_plan, OpenVINO
IR on the openvino backend (the bf16 entry with its inference precision), the camera-frame
artifacts with their uint8 HxWx3 input. Each config.pbtxt carries the input/output names and
dtypes, the declared ranges (max_batch_size is the batch max; H and W are -1 with their ranges as
parameters) and dynamic batching."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from attnvgg_runtime.files import ensure_writable_dir, write_text_atomic
from attnvgg_runtime.manifest import Artifact, Manifest, read_manifest, served_range, verify_artifacts

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "plan": ("tensorrt_plan", "model.plan"),
             "openvino-ir": ("openvino", "model.xml")}  # openvino is a backend, not a platform
DTYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}


def model_name(variant: str, artifact: Artifact) -> str:
    stem = Path(artifact.path).stem.removeprefix("model").lstrip(".") or "fp32"
    if artifact.runtime_options:  # the fp32 IR listed again to run in bf16
        stem = artifact.precision
    return f"{variant}_{artifact.format}_{stem}".replace(".", "_").replace("-", "_")


def config_pbtxt(name: str, platform: str, manifest: Manifest, options: dict | None = None,
                 precision: str = "fp32", frame: dict | None = None) -> str:
    """``frame``: a camera-frame artifact's input (uint8, HxWx3 per image), else the manifest's."""
    dyn = served_range(manifest.dynamic, precision)  # int8: from its min_side
    the_input = frame or manifest.input
    dims = "-1, -1, 3" if frame else "3, -1, -1"
    batch = dyn["batch"]
    preferred = sorted({b for b in (batch["opt"], min(8, batch["max"]), batch["max"]) if b > 1})
    params = "\n".join(
        f'parameters {{ key: "{axis}_range" value {{ string_value: "{r["min"]}:{r["opt"]}:{r["max"]}'
        f'{":" + str(r["multiple_of"]) if "multiple_of" in r else ""}" }} }}'
        for axis, r in dyn.items())
    params += "".join(f'\nparameters {{ key: "{k}" value {{ string_value: "{v}" }} }}'
                      for k, v in (options or {}).items())
    runtime = f'backend: "{platform}"' if platform == "openvino" else f'platform: "{platform}"'
    return f"""name: "{name}"
{runtime}
max_batch_size: {batch["max"]}
input [
  {{
    name: "{the_input["name"]}"
    data_type: {DTYPES[the_input["dtype"]]}
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "{manifest.output["name"]}"
    data_type: {DTYPES[manifest.output["dtype"]]}
    dims: [ {manifest.num_classes} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred or [1]))} ]
  max_queue_delay_microseconds: 2000
}}
{params}
"""


def _place(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # no copy of a 500 MB graph where the file system allows
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def manifest_to_triton(manifest_path: Path, repository: Path, log=print) -> list[Path]:
    manifest_path = Path(manifest_path)
    verify_artifacts(manifest_path)
    manifest = read_manifest(manifest_path)
    repository = ensure_writable_dir(repository)
    written = []
    for artifact in manifest.artifacts:
        if artifact.format not in PLATFORMS:
            continue  # ORT format files are for ONNX Runtime's own edge builds
        platform, filename = PLATFORMS[artifact.format]
        name = model_name(manifest.variant, artifact)
        version = ensure_writable_dir(repository / name / "1")
        files = [(artifact.path, filename)]
        if artifact.weights is not None:  # an IR's .bin goes beside its .xml (the .bin first)
            files.insert(0, (artifact.weights.path, Path(filename).with_suffix(".bin").name))
        for source, target in files:
            _place(manifest_path.parent / source, version / target)
        written.append(write_text_atomic(repository / name / "config.pbtxt", config_pbtxt(
            name, platform, manifest, artifact.runtime_options or None, artifact.precision, artifact.input)))
        log(f"  {name}: {platform}")
    return written
