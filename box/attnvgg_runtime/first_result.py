"""Cold start: from a process's start to its first result (start Python, import the runtime, read
and hash the artifact, load and compile it, run one image), what a box that starts a process per
request, or reboots, pays before steady-state latency means anything. Measured in a fresh child
process each time; with OpenVINO, the first process compiles into an empty model cache
(CACHE_DIR) and a second one is timed with that cache warm.

    python -m attnvgg_runtime.first_result MANIFEST ARTIFACT PRECISION RUNTIME [--cache-dir DIR]

is the child: it loads the artifact as `classify` does (sha256 checked), runs one image at the
build's opt size, and exits. The artifact's file is in the OS page cache either way (a rebooted
box reads it from disk too: slower by the file's size over the disk's speed)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.manifest import Artifact


def first_result_seconds(manifest_path: Path, artifact: Artifact, runtime: str,
                         cache_dir: Path | None = None, timeout: float = 600.0) -> float:
    """Wall seconds from starting a fresh process to its first output, for one artifact."""
    command = [sys.executable, "-m", "attnvgg_runtime.first_result", str(manifest_path), artifact.path,
               artifact.precision, runtime, *(["--cache-dir", str(cache_dir)] if cache_dir else [])]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise ToolchainError(f"the first-result process for {artifact.path} under {runtime} failed "
                             f"(exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return seconds


def first_results(manifest_path: Path, artifact: Artifact, runtime: str) -> dict[str, float]:
    """``cold_s``: a fresh process, nothing compiled before it (OpenVINO: with an empty model
    cache, which it fills: what a box with CACHE_DIR set pays on its first start); with OpenVINO
    also ``cache_warm_s``: a second process with that cache."""
    if runtime != "openvino":
        return {"cold_s": first_result_seconds(manifest_path, artifact, runtime)}
    with tempfile.TemporaryDirectory(prefix="attnvgg-ov-cache-") as cache:
        cold = first_result_seconds(manifest_path, artifact, runtime, Path(cache))
        return {"cold_s": cold,
                "cache_warm_s": first_result_seconds(manifest_path, artifact, runtime, Path(cache))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one artifact's first result, in this process")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("artifact")
    parser.add_argument("precision")
    parser.add_argument("runtime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args(argv)
    from attnvgg_runtime.artifacts import load_runner
    from attnvgg_runtime.manifest import read_manifest

    manifest = read_manifest(args.manifest)
    artifact = next(a for a in manifest.artifacts
                    if a.path == args.artifact and a.precision == args.precision)
    run = load_runner(args.manifest, artifact, args.runtime, cache_dir=args.cache_dir)
    h, w = manifest.dynamic["height"]["opt"], manifest.dynamic["width"]["opt"]
    logits = run(np.zeros((1, 3, h, w), np.float32))
    print(f"first result: {logits.shape}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
