"""EVAL_DIR's throughput in this process and on a local Ray cluster, measured in one run, and the
wall time of a 50,000-image validation set projected onto 1, 8 and 64 machines of this size:

    .venv/bin/python -m benchmarks.eval_scale build/se --images 96 --name eval-scale-zen5
    .venv/bin/python -m benchmarks.eval_scale --name eval-scale-zen5    # re-render the stored run

On ``build`` (a whole build with its gate's parity.json and bench.json): an .npz of ``--images``
photographs (crops of scikit-image's bundled photographs at 320x320, the size of a typical
validation image before its resize and crop; labels drawn at random, since throughput is what is
measured), read by eager and every reading the gate loaded, each into a fresh result store:
once in this process, once on a local Ray cluster (EVAL_CLUSTER=auto: a worker per core, one
reader thread each). Each is a wall time of the whole evaluation, sessions and cluster start
included, and the results are compared (the same top-5 for every image and reading).

The model (``project``), its assumptions stated in the rendered table:
- one machine reads each reading at the images/s bench.json measured for it (batch 8, every core
  of the machine); a reading bench.json has no row for (the fp16 graphs, the TensorRT-targeted
  int8 graph) at the rate of the row named beside it;
- each image costs its decode and preprocessing once per reading (measured here: a JPEG of the
  same photograph, quality 90, decoded and preprocessed);
- each machine loads each reading's session once (measured here: the in-process run's load
  times), and the cluster starts once (measured here: the Ray run's wall time less its
  reading);
- M machines split the images evenly: the reading part divides by M, the loads do not.
The model is checked against this run: its projection of the in-process run's own image count
must be within 20% of the measured wall time (``--tolerance``), else the benchmark fails.

Writes docs/runs/<name>/eval-scale.json and renders the table into docs/toolchain.md between
`<!-- eval-scale:<name>:begin -->` and `<!-- eval-scale:<name>:end -->`; tests/test_figures.py
renders it again from the stored run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from attnvgg_runtime.readers.cpu import cpu_identity
from benchmarks.figures import REPO, RUNS, replace_block

DOCUMENT = REPO / "docs" / "toolchain.md"
PROJECTED_IMAGES = 50_000
MACHINES = (1, 8, 64)
SIDE = 320
# readings bench.json does not time, and the row whose rate stands for theirs: the fp16 graph is
# computed in float32 on a CPU (its casts folded), the int8-trt graph by the same int8 kernels
STANDS_FOR = {"model.fp16.onnx": "model.onnx", "model.int8-trt.onnx": "model.int8-cpu.onnx"}


def photographs(count: int, seed: int = 0) -> np.ndarray:
    """``count`` SIDE x SIDE RGB crops of scikit-image's bundled photographs."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [img for img in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]
    crops = []
    for i in range(count):
        image = sources[i % len(sources)]
        y, x = (rng.integers(0, image.shape[k] - SIDE + 1) for k in (0, 1))
        crops.append(image[y:y + SIDE, x:x + SIDE])
    return np.stack(crops).astype(np.uint8)


def jpeg_decode_seconds(images: np.ndarray, pre) -> float:
    """Per image: a JPEG of it decoded and preprocessed (what an ImageFolder of JPEGs costs)."""
    from PIL import Image

    from attnvgg_export.calibration.data import transform_image

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    start = time.perf_counter()
    for data in encoded:
        with Image.open(io.BytesIO(data)) as image:
            transform_image(image, pre)
    return (time.perf_counter() - start) / len(encoded)


def gate_readings(build: Path) -> list[tuple[str, str]]:
    """(artifact, reader) of every reading the build's gate loaded."""
    parity = json.loads((build / "parity.json").read_text())
    return [(a["path"], a["reader"]) for a in parity["artifacts"]
            if not a["skipped"] and not any(f["check"] == "loads" for f in a["failures"])]


def throughput(build: Path) -> dict[str, dict]:
    """Images/s at the largest batch bench.json timed, by "artifact [reader]" (eager: "eager")."""
    bench = json.loads((build / "bench.json").read_text())
    rates = {}
    for key, row in bench["rows"].items():
        if row["runtime"] not in ("eager", "onnxruntime", "openvino", "openvino-bf16") or (
                row["runtime"] == "eager" and row["precision"] != "fp32"):
            continue
        batch = max(bench["results"][key], key=int)
        label = "eager" if row["runtime"] == "eager" else f"{row['artifact']} [{row['runtime']}]"
        rates[label] = {"images_per_s": bench["results"][key][batch]["images_per_s"], "batch": int(batch),
                        "bench_row": key}
    return rates


def rate_of(label: str, rates: dict) -> dict:
    if label in rates:
        return rates[label]
    path, reader = label.rsplit(" [", 1)
    stand_in = f"{STANDS_FOR.get(path, path)} [{reader}"
    if stand_in not in rates:
        raise SystemExit(f"bench.json has no rate for {label} (nor {stand_in}); run `make bench`")
    return rates[stand_in] | {"assumed_from": stand_in}


def timed_evaluation(build: Path, npz: Path, cluster: str | None, store: Path) -> dict:
    """The whole evaluation, in a fresh store; its wall time and each session's load time."""
    from attnvgg_export.verify import evaluate
    from attnvgg_runtime.manifest import read_manifest

    manifest = read_manifest(build / "manifest.json")
    readings = [evaluate.artifact_reading(manifest, path, reader) for path, reader in gate_readings(build)]
    loads, real = {}, evaluate.make_runner

    def timed(spec):
        start = time.perf_counter()
        runner = real(spec)
        loads[spec.reading.label] = time.perf_counter() - start
        return runner

    evaluate.make_runner = timed  # in process only: a cluster's workers load their own
    try:
        start = time.perf_counter()
        labelled = evaluate.labelled_set(npz, manifest, build, store=store, log=lambda *_: None)
        evaluate.evaluate_readings(build / "manifest.json", labelled,
                                   [evaluate.eager_reading(manifest), *readings], cluster, log=print)
        wall = time.perf_counter() - start
    finally:
        evaluate.make_runner = real
    return {"wall_s": round(wall, 2), "loads_s": {k: round(v, 2) for k, v in loads.items()},
            "readings": 1 + len(readings)}


def project(images: int, machines: int, per_image_s: dict[str, float], loads_s: dict[str, float],
            decode_s: float, start_s: float) -> float:
    """Wall seconds for ``images`` x the readings on ``machines`` (see the module's docstring)."""
    reading = sum(images * (seconds + decode_s) for seconds in per_image_s.values()) / machines
    return start_s + sum(loads_s.values()) + reading


def measure(build: Path, images: int, tolerance: float) -> dict:
    from attnvgg_export.calibration.preprocessing import Preprocessing
    from attnvgg_export.verify.results import ResultStore  # noqa: F401  (the store's schema)
    from attnvgg_runtime.manifest import read_manifest

    manifest = read_manifest(build / "manifest.json")
    pre = Preprocessing.from_json(manifest.preprocessing)
    pixels = photographs(images)
    labels = np.random.default_rng(1).integers(0, manifest.num_classes, images)
    rates = throughput(build)
    readings = [f"{path} [{reader}]" for path, reader in gate_readings(build)]
    per_image = {"eager": 1 / rates["eager"]["images_per_s"]} | {
        label: 1 / rate_of(label, rates)["images_per_s"] for label in readings}
    decode = jpeg_decode_seconds(pixels[:32], pre)
    with tempfile.TemporaryDirectory() as scratch:
        npz = Path(scratch) / "eval.npz"
        np.savez(npz, images=pixels, labels=labels)
        in_process = timed_evaluation(build, npz, None, Path(scratch) / "in-process.sqlite")
        os.environ.setdefault("EVAL_WORKER_CPUS", "1")
        on_ray = timed_evaluation(build, npz, "local", Path(scratch) / "ray.sqlite")
        import sqlite3

        rows = [sqlite3.connect(Path(scratch) / f).execute(
            "SELECT artifact_sha256, reader, image_sha256, top5 FROM results ORDER BY 1, 2, 3").fetchall()
            for f in ("in-process.sqlite", "ray.sqlite")]
    loads = {label: in_process["loads_s"].get(label if label != "eager" else "eager PyTorch fp32", 0.0)
             for label in per_image}
    # what the Ray run spent besides reading and loading as this process does: the cluster's start
    ray_start = max(0.0, on_ray["wall_s"] - project(images, 1, per_image, loads, decode, 0.0))
    projected_here = project(images, 1, per_image, loads, decode, 0.0)
    check = {"images": images, "measured_s": in_process["wall_s"], "projected_s": round(projected_here, 2),
             "ratio": round(projected_here / in_process["wall_s"], 3), "tolerance": tolerance}
    table = [{"machines": m, "hours": round(project(PROJECTED_IMAGES, m, per_image, loads, decode, ray_start)
                                            / 3600, 3)} for m in MACHINES]
    result = {"cpu": cpu_identity(), "build": str(build), "images": images, "readings": len(per_image),
              "throughput": {label: rate_of(label, rates) if label != "eager" else rates["eager"]
                             for label in per_image},
              "decode_s_per_image": round(decode, 5), "loads_s": loads, "ray_start_s": round(ray_start, 1),
              "in_process": in_process | {"images_per_s": round(images * in_process["readings"]
                                                                / in_process["wall_s"], 2)},
              "ray": on_ray | {"images_per_s": round(images * on_ray["readings"] / on_ray["wall_s"], 2),
                               "workers": os.cpu_count(), "worker_cpus": int(os.environ["EVAL_WORKER_CPUS"])},
              "same_results": rows[0] == rows[1] and len(rows[0]) == images * len(per_image),
              "check": check, "projection": {"images": PROJECTED_IMAGES, "table": table}}
    if abs(check["ratio"] - 1) > tolerance:
        print(json.dumps(result, indent=1))
        raise SystemExit(f"the model is {100 * abs(check['ratio'] - 1):.0f}% off the measured run "
                         f"(allowed {100 * tolerance:.0f}%): fix the model before projecting with it")
    return result


def render(result: dict) -> str:
    cpu, check, ip, ray = result["cpu"], result["check"], result["in_process"], result["ray"]
    assumed = sorted({f"{label} at {row['assumed_from']}'s rate"
                      for label, row in result["throughput"].items() if "assumed_from" in row})
    lines = [
        f"Measured on {cpu['model']} ({cpu['threads']} threads), one run, the full-size build's "
        f"{result['readings']} readings (eager and every reading its gate loaded) on {result['images']} "
        f"photographs:",
        "",
        "| where | wall | images/s (image x reading) | same top-5 as in process |",
        "|---|---:|---:|---|",
        f"| in this process | {ip['wall_s']:.0f} s | {ip['images_per_s']:.2f} | - |",
        f"| local Ray cluster ({ray['workers']} workers x {ray['worker_cpus']} CPU) | "
        f"{ray['wall_s']:.0f} s | "
        f"{ray['images_per_s']:.2f} | {'yes' if result['same_results'] else 'NO'} |",
        "",
        f"Projected wall time of {result['projection']['images']:,} images x the {result['readings']} "
        f"readings on machines of this size:",
        "",
        "| machines | hours |",
        "|---:|---:|",
        *[f"| {row['machines']} | {row['hours']:.2f} |" for row in result["projection"]["table"]],
        "",
        "The model: each machine reads a reading at bench.json's images/s for it (batch 8, every core)"
        + (f" ({'; '.join(assumed)})" if assumed else "")
        + f", plus {1000 * result['decode_s_per_image']:.1f} ms per image per reading to decode and "
        f"preprocess a JPEG; each machine loads each session once "
        f"({sum(result['loads_s'].values()):.0f} s in all, measured in process); the cluster starts once "
        f"({result['ray_start_s']:.0f} s, the Ray run's wall time past the model's); images split evenly. "
        f"Checked against this run: it projects {check['projected_s']:.0f} s for the in-process run's "
        f"{check['images']} images, measured {check['measured_s']:.0f} s ({check['ratio']:.2f}x; "
        f"allowed within {100 * check['tolerance']:.0f}%). Not modelled: a cluster's network and "
        f"shared file system, and nodes of other CPUs.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", nargs="?", type=Path, help="a full build (parity.json, bench.json)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--tolerance", type=float, default=0.2)
    parser.add_argument("--name", required=True, help="docs/runs/<name>/")
    args = parser.parse_args()
    out = RUNS / args.name / "eval-scale.json"
    if args.build:
        result = measure(args.build.resolve(), args.images, args.tolerance)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    result = json.loads(out.read_text())
    DOCUMENT.write_text(replace_block(DOCUMENT.read_text(), args.name, render(result), "eval-scale"))
    print(render(result))


if __name__ == "__main__":
    main()
