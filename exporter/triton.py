"""Stage: a Triton Inference Server model repository from a build (`make triton`).

One model per artifact: ONNX graphs on the onnxruntime backend, plans on tensorrt_plan. Each
config.pbtxt carries the input/output names and dtypes, the declared ranges (max_batch_size is
the batch max; H and W are -1 with their ranges as parameters) and dynamic batching."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .files import ensure_writable_dir, write_text_atomic
from .manifest import read_manifest, verify_artifacts

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "plan": ("tensorrt_plan", "model.plan")}
DTYPES = {"float32": "TYPE_FP32"}


def model_name(variant: str, artifact: dict) -> str:
    stem = Path(artifact["path"]).stem.removeprefix("model").lstrip(".") or "fp32"
    return f"{variant}_{artifact['format']}_{stem}".replace(".", "_").replace("-", "_")


def config_pbtxt(name: str, platform: str, manifest: dict) -> str:
    dyn = manifest["dynamic"]
    batch = dyn["batch"]
    preferred = sorted({b for b in (batch["opt"], min(8, batch["max"]), batch["max"]) if b > 1})
    params = "\n".join(
        f'parameters {{ key: "{axis}_range" value {{ string_value: "{r["min"]}:{r["opt"]}:{r["max"]}'
        f'{":" + str(r["multiple_of"]) if "multiple_of" in r else ""}" }} }}'
        for axis, r in dyn.items())
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {batch["max"]}
input [
  {{
    name: "{manifest["input"]["name"]}"
    data_type: {DTYPES[manifest["input"]["dtype"]]}
    dims: [ 3, -1, -1 ]
  }}
]
output [
  {{
    name: "{manifest["output"]["name"]}"
    data_type: {DTYPES[manifest["output"]["dtype"]]}
    dims: [ {manifest["num_classes"]} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred or [1]))} ]
  max_queue_delay_microseconds: 2000
}}
{params}
"""


def manifest_to_triton(manifest_path: Path, repository: Path, log=print) -> list[Path]:
    manifest_path = Path(manifest_path)
    verify_artifacts(manifest_path)
    manifest = read_manifest(manifest_path)
    repository = ensure_writable_dir(repository)
    written = []
    for artifact in manifest["artifacts"]:
        if artifact["format"] not in PLATFORMS:
            continue  # ORT format files are for ONNX Runtime's own edge builds
        platform, filename = PLATFORMS[artifact["format"]]
        name = model_name(manifest["variant"], artifact)
        version = ensure_writable_dir(repository / name / "1")
        source, target = manifest_path.parent / artifact["path"], version / filename
        tmp = version / f".{filename}.partial"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)  # no copy of a 500 MB graph where the file system allows
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        written.append(write_text_atomic(repository / name / "config.pbtxt",
                                         config_pbtxt(name, platform, manifest)))
        log(f"  {name}: {platform}")
    return written
