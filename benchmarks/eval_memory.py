"""Does EVAL_DIR stream? The gate's peak memory with an ImageFolder EVAL_DIR of a few hundred
images and of 10,000, on the trained digits fixture's build.

    .venv/bin/python -m benchmarks.eval_memory [--counts 600 10000] [--out DIR]

Each gate runs in its own process (its peak RSS, VmHWM, is its own; Linux's getrusage maxrss
would carry the RSS of the process that forked it) on every artifact of the build, both
readers. The images are the 600 unseen digits as 32x32 PNG files, repeated to the count in
class folders. Were they held at once, 10,000 preprocessed images would take 10,000 x 3 x 32 x
32 x 4 bytes = 117 MiB more than 600 do; streamed, the two peaks differ by the per-image
records only (identities and logits). An .npz EVAL_DIR is read whole (np.load of a zip member):
folders are the form for large sets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from attnvgg_export.graphs.precision import PrecisionConfig, build_precision_graphs

from . import digits
from .precision_table import fixture_manifest

GATE = """
import json, sys, time
from pathlib import Path
from attnvgg_export.verify.gate import run_parity
start = time.perf_counter()
report = run_parity(Path(sys.argv[1]), log=lambda *_: None, eval_dir=sys.argv[2])
# VmHWM: this process image's own peak (getrusage's maxrss would carry the forking parent's RSS)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_rss_mib": round(hwm / 1024), "seconds": round(time.perf_counter() - start, 1),
                  "images": max(a.accuracy["images"] for a in report.artifacts if a.accuracy),
                  "passed": report.passed}))
"""


def write_eval_folder(folder: Path, count: int) -> Path:
    pixels, labels = digits.digit_images()
    pixels, labels = pixels[digits.UNSEEN_START:], labels[digits.UNSEEN_START:]
    for i in range(count):
        target = folder / str(labels[i % len(labels)]) / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i % len(pixels)]).save(target)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", nargs="+", type=int, default=[600, 10_000])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="eval-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    manifest, _ = fixture_manifest("se", root)  # the digits build: 32x32, width 0.125
    build_precision_graphs(manifest, PrecisionConfig(
        calib_source=str(digits.write_validation_npz(root / "calib.npz"))), log=lambda *_: None)
    for count in args.counts:
        start = time.perf_counter()
        folder = write_eval_folder(root / f"eval-{count}", count)
        written = time.perf_counter() - start
        result = json.loads(subprocess.run(
            [sys.executable, "-c", GATE, str(manifest), str(folder)], check=True,
            capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"EVAL_DIR of {count} PNG files ({written:.0f} s to write): gate judged "
              f"{result['images']} images in {result['seconds']} s, peak {result['peak_rss_mib']} MiB, "
              f"{'passed' if result['passed'] else 'FAILED'}", flush=True)


if __name__ == "__main__":
    main()
