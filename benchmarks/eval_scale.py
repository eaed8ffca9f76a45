"""EVAL_DIR's throughput in this process and on a local Ray cluster, measured in one run, and the
wall time of a 50,000-image validation set projected onto 1, 8 and 64 machines of this size:

    .venv/bin/python -m benchmarks.eval_scale build/se --images 256 --name eval-scale-zen5
    .venv/bin/python -m benchmarks.eval_scale --name eval-scale-zen5    # re-render the stored run

On ``build`` (a whole build with its gate's parity.json and bench.json): an .npz of ``--images``
photographs (crops of scikit-image's bundled photographs at 320x320, about a validation image's
size before its resize and crop; labels drawn at random: throughput is what is measured), read
by eager and every reading the gate loaded, each run into a fresh result store: in this process;
on a local Ray cluster (EVAL_CLUSTER=auto: a worker per core, one reader thread each) on a
quarter of them, on half, and on all of them. Each is the wall time
of the whole evaluation, sessions and cluster start included; the in-process and Ray results are
compared image by image.

The model (``project_in_process``, ``project_ray``), its assumptions rendered with the table:
- a machine reads each reading at the images/s bench.json measured for it (batch 8, every core
  of the machine); a reading bench.json has no row for (the fp16 graphs, the TensorRT-targeted
  int8 graph, OpenVINO's reading of an ONNX graph) at the rate of the row STANDS_FOR names;
- each image costs its decode and preprocessing once per reading (measured here: a JPEG of the
  same photograph, quality 90, decoded and preprocessed);
- in process: each session loaded once (measured in the in-process run), then every image;
- on Ray: a reading's batches go round the workers, each reading at efficiency/workers of its
  machine's rate, plus a fixed cost (the cluster's start, each reading's actors and sessions),
  both fitted on the two smaller Ray runs (rounds of batches against wall time: Ray moves each
  batch through its object store, and its decode tasks share the cores).
Each model is checked against a run it was not fitted on: the in-process model (nothing fitted)
against the in-process run, the Ray model against the Ray run on all the images (twice the rounds
of the larger run it was fitted on): each within 20% of its wall time (``--tolerance``), else the
benchmark fails and stores nothing. What no run here checks: more than one machine.

Writes docs/runs/<name>/eval-scale.json and renders the table into docs/toolchain.md between
`<!-- eval-scale:<name>:begin -->` and `<!-- eval-scale:<name>:end -->`; tests/test_figures.py
renders it again from the stored run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
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
# computed in float32 on a CPU (its casts folded), the int8-trt graph by the same int8 kernels as
# the int8-cpu one; OpenVINO reads an ONNX graph as it reads the IR converted from it
STANDS_FOR = {
    "model.fp16.onnx [onnxruntime]": "model.onnx [onnxruntime]",
    "model.int8-trt.onnx [onnxruntime]": "model.int8-cpu.onnx [onnxruntime]",
    "model.onnx [openvino]": "engines/openvino/model.fp32.xml [openvino]",
    "model.fp16.onnx [openvino]": "engines/openvino/model.fp32.xml [openvino]",
    "model.int8-cpu.onnx [openvino]": "engines/openvino/model.int8.xml [openvino]",
    "model.int8-trt.onnx [openvino]": "engines/openvino/model.int8.xml [openvino]",
}


def photographs(count: int, seed: int = 0) -> np.ndarray:
    """``count`` SIDE x SIDE RGB crops of scikit-image's bundled photographs."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.coffee(), data.rocket(), data.immunohistochemistry()]
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
    stand_in = STANDS_FOR.get(label, label)
    if stand_in not in rates:
        raise SystemExit(f"bench.json has no rate for {label} (nor {stand_in}); run `make bench`")
    return rates[stand_in] | {"assumed_from": stand_in}


def timed_evaluation(build: Path, npz: Path, cluster: str | None, store: Path) -> dict:
    """The whole evaluation, in a fresh store: its wall time and, in process, each session's load
    time and each reading's wall time."""
    from attnvgg_export.verify import evaluate
    from attnvgg_runtime.manifest import read_manifest

    manifest = read_manifest(build / "manifest.json")
    readings = [evaluate.artifact_reading(manifest, path, reader) for path, reader in gate_readings(build)]
    loads, walls, make, run = {}, {}, evaluate.make_runner, evaluate.run_in_process

    def timed_make(spec):
        start = time.perf_counter()
        runner = make(spec)
        loads[spec.reading.label] = round(time.perf_counter() - start, 2)
        return runner

    def timed_run(spec, *args):
        start = time.perf_counter()
        run(spec, *args)
        walls[spec.reading.label] = round(time.perf_counter() - start, 2)

    evaluate.make_runner, evaluate.run_in_process = timed_make, timed_run  # a cluster's workers: not timed
    try:
        start = time.perf_counter()
        labelled = evaluate.labelled_set(npz, manifest, build, store=store, log=lambda *_: None)
        evaluate.evaluate_readings(build / "manifest.json", labelled,
                                   [evaluate.eager_reading(manifest), *readings], cluster, log=print)
        wall = time.perf_counter() - start
    finally:
        evaluate.make_runner, evaluate.run_in_process = make, run
    return {"wall_s": round(wall, 2), "loads_s": loads, "readings_s": walls, "readings": 1 + len(readings),
            "batch": labelled.batch}


def project_in_process(images: int, per_image_s: dict[str, float], loads_s: dict[str, float],
                       decode_s: float) -> float:
    """One machine, in process: each session loaded, then every image read (and decoded) by it."""
    return sum(loads_s.values()) + sum(images * (s + decode_s) for s in per_image_s.values())


def project_ray(images: int, machines: int, per_image_s: dict[str, float], decode_s: float, batch: int,
                workers: int, fixed_s: float, efficiency: float = 1.0) -> float:
    """``machines`` of ``workers`` one-thread workers each: a reading's batches go round the workers,
    each worker reading at ``efficiency``/``workers`` of its machine's rate; plus the fixed cost
    (cluster start, each reading's actors and sessions)."""
    batches = -(-images // batch)
    rounds = -(-batches // (machines * workers))
    return fixed_s + sum(rounds * min(batch, images) * workers * (s + decode_s) / efficiency
                         for s in per_image_s.values())


def measure(build: Path, images: int, tolerance: float) -> dict:
    from attnvgg_export.calibration.preprocessing import Preprocessing
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
    os.environ["EVAL_WORKER_CPUS"] = "1"
    workers = os.cpu_count()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        runs = {}
        for name, count, cluster in (("in_process", images, None), ("ray_quarter", images // 4, "local"),
                                     ("ray_half", images // 2, "local"), ("ray", images, "local")):
            npz = scratch / f"eval-{count}.npz"
            np.savez(npz, images=pixels[:count], labels=labels[:count])
            runs[name] = timed_evaluation(build, npz, cluster, scratch / f"{name}.sqlite") | {"images": count}
        rows = {name: sqlite3.connect(scratch / f"{name}.sqlite").execute(
            "SELECT artifact_sha256, reader, image_sha256, top5 FROM results ORDER BY 1, 2, 3").fetchall()
            for name in ("in_process", "ray")}
    batch = runs["in_process"]["batch"]
    loads = {label: runs["in_process"]["loads_s"][label if label != "eager" else "eager PyTorch fp32"]
             for label in per_image}
    # Ray's two smaller runs fit its two parameters: its wall time is a fixed cost (the cluster's
    # start, each reading's actors and their sessions) plus rounds of batches, each round at an
    # efficiency of the machine's bench.json rate (each batch through Ray's object store, the
    # decode tasks beside the readers); the run on all the images checks the fit
    small, large = images // 4, images // 2
    rounds = {n: project_ray(n, 1, per_image, decode, batch, workers, 0) for n in (small, large)}
    walls = {small: runs["ray_quarter"]["wall_s"], large: runs["ray_half"]["wall_s"]}
    if rounds[large] == rounds[small]:
        raise SystemExit(f"{small} and {large} images are the same rounds of batches of {batch} on "
                         f"{workers} workers: nothing to fit; run with more --images")
    efficiency = (rounds[large] - rounds[small]) / max(1e-9, walls[large] - walls[small])
    fixed = max(0.0, walls[large] - rounds[large] / efficiency)
    checks = {"in_process": {"images": images, "measured_s": runs["in_process"]["wall_s"],
                             "projected_s": round(project_in_process(images, per_image, loads, decode), 2)},
              "ray": {"images": images, "measured_s": runs["ray"]["wall_s"],
                      "projected_s": round(project_ray(images, 1, per_image, decode, batch, workers, fixed,
                                                       efficiency), 2)}}
    for check in checks.values():
        check |= {"ratio": round(check["projected_s"] / check["measured_s"], 3), "tolerance": tolerance}
    table = [{"machines": 1, "where": "in process",
              "hours": round(project_in_process(PROJECTED_IMAGES, per_image, loads, decode) / 3600, 3)}] + [
        {"machines": m, "where": "Ray",
         "hours": round(project_ray(PROJECTED_IMAGES, m, per_image, decode, batch, workers, fixed, efficiency)
                        / 3600, 3)}
        for m in MACHINES]
    differing = sorted({row[1] for row in set(rows["in_process"]) ^ set(rows["ray"])})
    result = {"cpu": cpu_identity(), "build": str(build), "images": images, "readings": len(per_image),
              "batch": batch, "workers": workers, "worker_cpus": 1,
              "throughput": {label: rate_of(label, rates) if label != "eager" else rates["eager"]
                             for label in per_image},
              "decode_s_per_image": round(decode, 5), "loads_s": loads, "ray_fixed_s": round(fixed, 1),
              "ray_efficiency": round(efficiency, 3),
              "runs": {name: run | {"images_per_s": round(run["images"] * run["readings"] / run["wall_s"],
                                                          2)} for name, run in runs.items()},
              "results_compared": len(rows["in_process"]),
              "results_differing": len(set(rows["in_process"]) - set(rows["ray"])),
              "readers_differing": differing,
              "checks": checks, "projection": {"images": PROJECTED_IMAGES, "table": table}}
    off = {name: c for name, c in checks.items() if abs(c["ratio"] - 1) > tolerance}
    if off:
        print(json.dumps(result, indent=1))
        raise SystemExit(f"the model is off the measured run by more than {100 * tolerance:.0f}%: {off}; "
                         f"fix the model before projecting with it")
    return result


def render(result: dict) -> str:
    cpu, runs, checks = result["cpu"], result["runs"], result["checks"]
    assumed = sorted({f"{label} at {row['assumed_from']}'s rate"
                      for label, row in result["throughput"].items() if "assumed_from" in row})
    workers = f"{result['workers']} workers x {result['worker_cpus']} CPU"
    same = ("the same top-5 for every image and reading" if not result["results_differing"] else
            f"{result['results_differing']} of {result['results_compared']} image-readings with another "
            f"top-5 order ({', '.join(result['readers_differing'])}: the thread count moves their float "
            f"sums in the last bits, and an untrained model's logits are near-equal)")
    lines = [
        f"Measured on {cpu['model']} ({cpu['threads']} threads), one run, the full-size build's "
        f"{result['readings']} readings (eager and every reading its gate loaded), batch {result['batch']}:",
        "",
        "| where | images | wall | images/s (image x reading) | model's projection |",
        "|---|---:|---:|---:|---:|",
        f"| in this process | {runs['in_process']['images']} | {runs['in_process']['wall_s']:.0f} s | "
        f"{runs['in_process']['images_per_s']:.2f} | {checks['in_process']['projected_s']:.0f} s "
        f"({checks['in_process']['ratio']:.2f}x) |",
        *[f"| local Ray cluster ({workers}) | {runs[name]['images']} | {runs[name]['wall_s']:.0f} s | "
          f"{runs[name]['images_per_s']:.2f} | (fitted on) |" for name in ("ray_quarter", "ray_half")],
        f"| local Ray cluster ({workers}) | {runs['ray']['images']} | {runs['ray']['wall_s']:.0f} s | "
        f"{runs['ray']['images_per_s']:.2f} | {checks['ray']['projected_s']:.0f} s "
        f"({checks['ray']['ratio']:.2f}x) |",
        "",
        f"In process and on Ray: {same}.",
        "",
        f"Projected wall time of {result['projection']['images']:,} images x the {result['readings']} "
        f"readings on machines of this size:",
        "",
        "| machines | where | hours |",
        "|---:|---|---:|",
        *[f"| {row['machines']} | {row['where']} | {row['hours']:.2f} |"
          for row in result["projection"]["table"]],
        "",
        "The model: a machine reads each reading at bench.json's images/s for it (batch 8, every core)"
        + (f" ({'; '.join(assumed)})" if assumed else "")
        + f", plus {1000 * result['decode_s_per_image']:.1f} ms per image per reading to decode and "
        f"preprocess a JPEG of it. In process: each session loaded once "
        f"({sum(result['loads_s'].values()):.0f} s in all, measured), then every image. On Ray: a "
        f"reading's batches of {result['batch']} go round the workers, each at "
        f"{result['ray_efficiency']:.2f}/{result['workers']} of its machine's rate (Ray's "
        f"efficiency here: each batch through the object store, decode tasks beside the readers), "
        f"plus a fixed {result['ray_fixed_s']:.0f} s (the cluster's start, each reading's actors and "
        f"their sessions): both fitted on the two smaller Ray runs above and checked against the "
        f"third, on twice the images of the larger. The in-process model has nothing fitted and is "
        f"checked against its run. Each check within "
        f"{100 * checks['in_process']['tolerance']:.0f}% (the benchmark fails otherwise). Checked on "
        f"one machine only; not modelled: a cluster's network and shared file system, nodes of other "
        f"CPUs, and the driver (one SQLite write per batch).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", nargs="?", type=Path, help="a full build (parity.json, bench.json)")
    parser.add_argument("--images", type=int, default=256)
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
