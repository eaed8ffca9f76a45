"""Every bad input of issue 41's list (and their neighbours), run as a user runs them, against a
gated reduced build: each one's exit code and the first line of what it said. A bad input must
exit 2 (1 is reserved for a gate or verify that found a breach), name the thing and the fix, show
no traceback, and leave the build as it was; the few that must pass (a corrupt image in
CALIB_DIR, files the box writes later in a signed build) exit 0.

    .venv/bin/python -m benchmarks.bad_inputs build/ci/se --name bad-inputs-amx     # stored run
    (docs/runs/<name>/bad-inputs.json, and its table rendered into docs/refuses.md)

tests/test_bad_inputs.py (make test-slow) runs every case and holds each to its expected exit
code and words.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
WITHOUT = "('torch', 'torchvision')"  # the box's command as on a box without them
NO_TORCH = ("import runpy, sys\n"
            f"for name in {WITHOUT}: sys.modules[name] = None\n"
            "sys.argv = ['attnvgg-runtime', *sys.argv[1:]]\n"
            "runpy.run_module('attnvgg_runtime', run_name='__main__')\n")
# ... and without either runtime (find_spec answers None for a module set to None)
NO_RUNTIME = NO_TORCH.replace(WITHOUT, "('torch', 'torchvision', 'onnxruntime', 'openvino')")
REDUCED = ["VARIANT=se", "WIDTH_MULT=0.125", "NUM_CLASSES=10"]


@dataclass(frozen=True)
class Case:
    area: str
    what: str
    command: Callable[[Path, Path], list[str]]  # (the build, a scratch folder) -> argv, prepared
    exit: int
    says: str  # words the message must hold (the thing named, or the fix)


def fork(build: Path, work: Path, name: str) -> Path:
    """A copy of the build made of hard links (cheap): rewrite a file only through ``rewrite``."""
    target = work / name / build.name
    shutil.copytree(build, target, copy_function=os.link)
    return target


def rewrite(path: Path, data: bytes | str) -> None:
    """Replace a hard-linked file with new content, leaving the build it was linked from alone."""
    path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def edit_manifest(root: Path, change: Callable[[dict], None]) -> Path:
    data = json.loads((root / "manifest.json").read_text())
    change(data)
    rewrite(root / "manifest.json", json.dumps(data))
    return root / "manifest.json"


def artifact(data: dict, path: str) -> dict:
    return next(a for a in data["artifacts"] if a["path"] == path)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def box(*args) -> list[str]:
    return [sys.executable, "-c", NO_TORCH, *map(str, args)]


def export(*args) -> list[str]:
    return [str(VENV_BIN / "attnvgg-export"), *map(str, args)]


def make(*args) -> list[str]:
    return ["make", "--no-print-directory", "-C", str(REPO), *map(str, args)]


def bomb_png(path: Path, side: int = 14000) -> Path:
    """A PNG whose header declares side x side pixels, without them (PIL refuses it on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def photo() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "chelsea.png"


def _checkpoint(work: Path, name: str, change: Callable[[dict], dict] | None = None,
                width: float = 0.125) -> Path:
    import torch

    from attnvgg_export import models

    model = models.create_model("se", num_classes=10, width=width)
    state = model.state_dict()
    path = work / name
    torch.save(change(state) if change else state, path)
    return path


def _nan(state: dict) -> dict:
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    return state


def _lightning(state: dict) -> dict:
    return {"state_dict": {f"model.{k}": v for k, v in state.items()}}


def _pickled(work: Path) -> Path:
    import pickle

    path = work / "pickled.pt"
    path.write_bytes(pickle.dumps({"weights": Path("x")}))
    return path


def _keys(work: Path) -> Path:
    from attnvgg_runtime.signing import make_key_pair

    if not (work / "keys" / "public.pem").exists():
        make_key_pair(work / "keys")
    return work / "keys"


def _signed(build: Path, work: Path, name: str) -> Path:
    from attnvgg_runtime.signing import sign_build

    root = fork(build, work, name)
    sign_build(root / "manifest.json", _keys(work) / "private.pem")
    return root


def _altered_signed(build: Path, work: Path) -> list[str]:
    root = _signed(build, work, "altered")
    data = bytearray((root / "model.int8-cpu.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    rewrite(root / "model.int8-cpu.onnx", bytes(data))
    return box("signature", root / "manifest.json", "--key", _keys(work) / "public.pem")


def _calib_with_a_corrupt_jpeg(work: Path) -> Path:
    from PIL import Image

    folder = work / "calib-corrupt"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return folder


def _corrupt_calib_build(build: Path, work: Path) -> list[str]:
    """The whole reduced chain through make, then the skipped file looked up in the manifest's
    data_split.skipped and in the report (a shell: both must hold for exit 0)."""
    out = work / "corrupt"
    command = make("engine", *REDUCED, f"OUT={out}", f"CALIB_DIR={_calib_with_a_corrupt_jpeg(work)}",
                   "BATCH_RANGE=1,1,2", "HEIGHT_RANGE=32,64,64", "WIDTH_RANGE=32,64,64", "IMG_SIZE=64",
                   "BENCH_ARGS=--seconds 0.2 --no-compile --batches 1")
    listed = (f"python3 -c \"import json,sys; d=json.load(open('{out}/se/manifest.json'))['data_split']; "
              f"sys.exit(0 if [s['file'] for s in d['skipped']] == ['broken.jpg'] else 1)\"")
    return ["bash", "-c", " ".join(f"'{a}'" for a in command)
            + f" && {listed} && grep -q '| broken.jpg | undecodable' {out}/se/report.md"]


def _pickled_golden(build: Path, work: Path) -> list[str]:
    root = fork(build, work, "pickled-golden")
    golden = json.loads((root / "golden/inputs.json").read_text())
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    golden[0]["input"]["array"] = base64.b64encode(buffer.getvalue()).decode()
    rewrite(root / "golden/inputs.json", json.dumps(golden))
    edit_manifest(root, lambda d: d["golden"]["inputs"].update(sha256=sha256(root / "golden/inputs.json")))
    return box("verify", root / "manifest.json")


def _random_bytes_with_their_sha(build: Path, work: Path) -> list[str]:
    root = fork(build, work, "random-bytes")
    path = root / "engines/ort/model.fp32.ort"
    rewrite(path, np.random.default_rng(0).bytes(4096))
    edit_manifest(root, lambda d: artifact(d, "engines/ort/model.fp32.ort").update(sha256=sha256(path)))
    return box("bench", root / "manifest.json", "--seconds", "0.1")


def _weights_redirected(build: Path, work: Path) -> list[str]:
    root = fork(build, work, "weights-redirected")
    ir = "engines/openvino/model.int8.xml"
    shutil.copy(root / "engines/openvino/model.int8.bin", root / "elsewhere.bin")
    data = bytearray((root / "engines/openvino/model.int8.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    rewrite(root / "engines/openvino/model.int8.bin", bytes(data))
    edit_manifest(root, lambda d: artifact(d, ir)["weights"].update(path="elsewhere.bin"))
    return box("classify", root / "manifest.json", photo(), "--runtime", "openvino", "--precision", "int8")


def _bin_swapped(build: Path, work: Path) -> list[str]:
    root = fork(build, work, "bin-swapped")
    data = bytearray((root / "engines/openvino/model.int8.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    rewrite(root / "engines/openvino/model.int8.bin", bytes(data))
    return box("classify", root / "manifest.json", photo(), "--runtime", "openvino", "--precision", "int8")


def _path_out(build: Path, work: Path, name: str, path: str, command: str) -> list[str]:
    root = fork(build, work, name)
    edit_manifest(root, lambda d: artifact(d, "model.onnx").update(path=path))
    return box(command, root / "manifest.json", *(["--seconds", "0.1"] if command == "bench" else []))


def _symlink_out(build: Path, work: Path) -> list[str]:
    root = fork(build, work, "symlink-out")
    outside = work / "outside.ort"
    shutil.copy(root / "engines/ort/model.fp32.ort", outside)
    (root / "link.ort").symlink_to(outside)
    edit_manifest(root, lambda d: artifact(d, "engines/ort/model.fp32.ort").update(
        path="link.ort", sha256=sha256(outside)))
    return box("classify", root / "manifest.json", photo(), "--runtime", "onnxruntime", "--precision", "fp32",
               "--allow-unverified")  # past the verdict check: what it would then open


def _a_file(work: Path) -> Path:
    (work / "a-file").write_text("")
    return (work / "a-file").absolute()


def cases() -> list[Case]:
    m = "manifest.json"
    return [
        # Make variables and the toolchain's command line: refused before anything is written
        Case("make", "CHECKPOINT=missing.pt", lambda b, w: make("engine", *REDUCED, f"OUT={w}/o",
             f"CHECKPOINT={w}/missing.pt"), 2, "CHECKPOINT="),
        Case("make", "OUT= an existing file", lambda b, w: make("engine", *REDUCED, f"OUT={_a_file(w)}"),
             2, "is a file: name a folder"),
        Case("make", "CALIB_DIR= a missing folder", lambda b, w: make("engine", *REDUCED, f"OUT={w}/o",
             f"CALIB_DIR={w}/nope"), 2, "CALIB_DIR="),
        Case("make", "LABELS= a folder", lambda b, w: make("engine", *REDUCED, f"OUT={w}/o", f"LABELS={w}"),
             2, "is a folder"),
        Case("make", "TOLERANCES= a missing file", lambda b, w: make("parity", *REDUCED, f"OUT={w}/o",
             f"TOLERANCES={w}/t.toml"), 2, "TOLERANCES="),
        Case("make", "make sign without KEY", lambda b, w: make("sign", *REDUCED, f"OUT={b.parent}"), 2,
             "KEY= is unset"),
        Case("command line", "IMG_SIZE=0", lambda b, w: export("export", "--variant", "se", "--img-size=0",
             "--out", w / "o"), 2, "IMG_SIZE='0' is not allowed"),
        Case("command line", "IMG_SIZE=-5", lambda b, w: export("export", "--variant", "se", "--img-size=-5",
             "--out", w / "o"), 2, "IMG_SIZE='-5' is not allowed"),
        Case("command line", "IMG_SIZE=100", lambda b, w: export("export", "--variant", "se",
             "--img-size=100", "--out", w / "o"), 2, "a multiple of 32"),
        Case("command line", "WIDTH_MULT=0", lambda b, w: export("export", "--variant", "se",
             "--width-mult=0", "--out", w / "o"), 2, "WIDTH_MULT='0' is not allowed"),
        Case("command line", "NUM_CLASSES=0", lambda b, w: export("export", "--variant", "se",
             "--num-classes=0", "--out", w / "o"), 2, "NUM_CLASSES='0' is not allowed"),
        Case("command line", "HEIGHT_RANGE=-5,-5,-10", lambda b, w: export("export", "--variant", "se",
             "--height=-5,-5,-10", "--out", w / "o"), 2, "HEIGHT_RANGE / --height"),
        Case("command line", "VARIANT=vgg19", lambda b, w: export("card", "--variant", "vgg19"), 2,
             "unknown variant 'vgg19'"),
        Case("command line", "TOLERANCES with rel_l2_max = \"abc\"", lambda b, w: export(
            "parity", "--manifest", b / m, "--tolerances", _toml(w)), 2, "a budget is a number"),
        # checkpoints
        Case("checkpoint", "a text file", lambda b, w: export("export", "--variant", "se", "--width-mult",
             "0.125", "--num-classes", "10", "--checkpoint", _text(w), "--out", w / "o"), 2,
             "not a PyTorch checkpoint"),
        Case("checkpoint", "pickled objects", lambda b, w: export("export", "--variant", "se",
             "--width-mult", "0.125", "--num-classes", "10", "--checkpoint", _pickled(w), "--out", w / "o"),
             2, "Nothing in it was executed"),
        Case("checkpoint", "NaN in a weight", lambda b, w: export("export", "--variant", "se",
             "--width-mult", "0.125", "--num-classes", "10", "--checkpoint", _checkpoint(w, "nan.pt", _nan),
             "--out", w / "o"), 2, "NaN or infinite values"),
        Case("checkpoint", "width 0.125 built at WIDTH_MULT=0.25", lambda b, w: export(
            "export", "--variant", "se", "--width-mult", "0.25", "--num-classes", "10", "--checkpoint",
            _checkpoint(w, "narrow.pt"), "--out", w / "o"), 2, "width (WIDTH_MULT"),
        Case("checkpoint", "a Lightning checkpoint (model. prefix): loads", lambda b, w: export(
            "export", "--variant", "se", "--width-mult", "0.125", "--num-classes", "10", "--height",
            "32,32,32", "--width", "32,32,32", "--batch", "1,1,1", "--checkpoint",
            _checkpoint(w, "lightning.ckpt", _lightning), "--out", w / "o"), 0, ""),
        # data: a corrupt image is skipped by both stages alike, and the build passes
        Case("data", "CALIB_DIR with one corrupt JPEG among 40 PNGs: builds, gate passes, file listed",
             _corrupt_calib_build, 0, "parity: passed"),
        Case("data", "classify a decompression bomb", lambda b, w: box(
            "classify", b / m, bomb_png(w / "bomb.png"), "--precision", "fp32"), 2, "DecompressionBombError"),
        Case("data", "classify a missing image", lambda b, w: box("classify", b / m, w / "nope.jpg",
             "--precision", "fp32"), 2, "nope.jpg"),
        # the box's flags
        Case("box flags", "verify --images 0", lambda b, w: box("verify", b / m, "--images", "0"), 2,
             "not a whole number of at least 1"),
        Case("box flags", "verify --images -3", lambda b, w: box("verify", b / m, "--images=-3"), 2,
             "not a whole number of at least 1"),
        Case("box flags", "verify --reader onnxruntim", lambda b, w: box("verify", b / m, "--reader",
             "onnxruntim"), 2, "no reader ['onnxruntim']"),
        Case("box flags", "bench --batches 0", lambda b, w: box("bench", b / m, "--batches", "0"), 2,
             "--batches"),
        Case("box flags", "bench --seconds 0", lambda b, w: box("bench", b / m, "--seconds", "0"), 2,
             "not a positive number of seconds"),
        Case("box flags", "classify --top 0", lambda b, w: box("classify", b / m, photo(), "--top", "0"),
             2, "--top"),
        Case("box flags", "bench with no runtime installed", lambda b, w: [
            sys.executable, "-c", NO_RUNTIME, "bench", fork(b, w, "no-runtime") / m], 2,
             "neither onnxruntime nor openvino is installed"),
        # the box trusts nothing outside its build folder
        Case("box paths", "artifact path ../../../../etc/passwd (verify)", lambda b, w: _path_out(
            b, w, "dotdot", "../../../../../../../../etc/passwd", "verify"), 2, "not a plain path inside"),
        Case("box paths", "artifact path /etc/passwd (bench)", lambda b, w: _path_out(
            b, w, "absolute", "/etc/passwd", "bench"), 2, "not a plain path inside"),
        Case("box paths", "golden inputs path outside the folder", lambda b, w: box("verify", edit_manifest(
            fork(b, w, "golden-out"), lambda d: d["golden"]["inputs"].update(path="../../../etc/passwd")
        )), 2, "golden inputs"),
        Case("box paths", "a symlink in the folder that leads out (classify)", _symlink_out, 2,
             "outside the build folder"),
        Case("box paths", "IR weights.path redirected, real .bin damaged (classify)", _weights_redirected, 2,
             "OpenVINO loads engines/openvino/model.int8.bin"),
        Case("box paths", "IR .bin damaged behind the manifest (classify)", _bin_swapped, 2,
             "does not match the sha256"),
        Case("box files", "artifact of random bytes with its sha256 (bench)", _random_bytes_with_their_sha, 2,
             "onnxruntime cannot load it"),
        Case("box files", "golden I/O holding a pickled object", _pickled_golden, 2, "cannot be read"),
        Case("box files", "manifest.json not JSON", lambda b, w: box("verify", _not_json(b, w)), 2,
             "is not valid JSON"),
        Case("box files", "manifest schema 2.0", lambda b, w: box("verify", edit_manifest(
            fork(b, w, "schema2"), lambda d: d.update(schema_version="2.0"))), 2, "is not 1.x"),
        # signed builds
        Case("signature", "--require-signature on an unsigned build", lambda b, w: box(
            "verify", _unsigned(b, w) / m, "--require-signature", _keys(w) / "public.pem"), 2,
            "is not signed"),
        Case("signature", "one altered byte in a signed build", _altered_signed, 2,
             "changed or missing since it was signed: model.int8-cpu.onnx"),
        Case("signature", "a signed build checked with another key", lambda b, w: box(
            "signature", _signed(b, w, "other-key") / m, "--key", _other_key(w)), 2, "not this key's"),
        Case("signature", "a signed build after the box wrote verify.json: still verifies", lambda b, w: box(
            "verify", _signed(b, w, "box-wrote") / m, "--require-signature", _keys(w) / "public.pem",
            "--case", "heldout", "--images", "1", "--reader", "onnxruntime", "--artifact", "model.onnx"),
            0, "signature verified"),
    ]


def _toml(work: Path) -> Path:
    (work / "t.toml").write_text('[precision.int8]\nrel_l2_max = "abc"\n')
    return work / "t.toml"


def _text(work: Path) -> Path:
    (work / "weights.pt").write_text("these are not weights\n")
    return work / "weights.pt"


def _not_json(build: Path, work: Path) -> Path:
    root = fork(build, work, "not-json")
    rewrite(root / "manifest.json", "{not json")
    return root / "manifest.json"


def _unsigned(build: Path, work: Path) -> Path:
    root = fork(build, work, "unsigned")
    (root / "build.sig").unlink(missing_ok=True)
    return root


def _other_key(work: Path) -> Path:
    from attnvgg_runtime.signing import make_key_pair

    if not (work / "other-key" / "public.pem").exists():
        make_key_pair(work / "other-key")
    return work / "other-key" / "public.pem"


def run_case(case: Case, build: Path, work: Path) -> dict:
    folder = work / f"case-{abs(hash(case.what)) % 10**8}"
    folder.mkdir(parents=True, exist_ok=True)
    argv = case.command(build, folder)
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=folder)
    said = result.stderr.strip().splitlines() + result.stdout.strip().splitlines()
    errors = [line for line in said if "error" in line.lower() or "***" in line]
    first = (errors or said or [""])[0] if result.returncode else (
        [line for line in said if case.says and case.says in line] or said or [""])[-1]
    for path, name in ((folder, "<scratch>"), (build, "<build>"), (REPO, "<repo>")):
        first = first.replace(str(path), name)
    return {"area": case.area, "input": case.what, "exit": result.returncode, "expected_exit": case.exit,
            "message": first[:400], "says": case.says, "traceback": "Traceback" in result.stderr,
            "holds": (result.returncode == case.exit and case.says in result.stderr + result.stdout
                      and "Traceback" not in result.stderr),
            "seconds": round(time.monotonic() - start, 1)}


def run_all(build: Path, work: Path, log=print) -> list[dict]:
    rows = []
    for case in cases():
        row = run_case(case, build, work)
        log(f"{'ok  ' if row['holds'] else 'FAIL'} exit {row['exit']} ({row['seconds']} s) {case.area}: "
            f"{case.what}: {row['message'][:160]}")
        rows.append(row)
    return rows


def render(rows: list[dict], cpu: str, commit: str) -> str:
    held = sum(r["holds"] for r in rows)
    lines = [f"Run on {cpu} at commit {commit}: {held} of {len(rows)} cases hold (exit code and "
             f"words as expected, no traceback).", "",
             "| area | bad input | exit | what it says (first line) |", "|---|---|---|---|"]
    for r in rows:
        message = r["message"].replace("|", "\\|").replace(str(Path.home()), "~")
        lines.append(f"| {r['area']} | {r['input']} | {r['exit']}{'' if r['holds'] else ' (NOT as expected)'}"
                     f" | {message} |")
    return "\n".join(lines)


DOC = REPO / "docs" / "refuses.md"


def render_stored(name: str) -> str:
    """docs/refuses.md's block for the stored run ``name`` (tests/test_figures.py holds it)."""
    stored = json.loads((REPO / "docs" / "runs" / name / "bad-inputs.json").read_text())
    return render(stored["rows"], stored["cpu"], stored["commit"]) + "\n"


def write_doc_block(name: str) -> None:
    import re

    text = DOC.read_text()
    block = f"<!-- figures:{name}:begin -->\n{render_stored(name)}<!-- figures:{name}:end -->"
    pattern = r"<!-- figures:\S+:begin -->\n.*?<!-- figures:\S+:end -->"
    DOC.write_text(re.sub(pattern, lambda _: block, text, flags=re.S) if re.search(pattern, text, re.S)
                   else text.rstrip("\n") + "\n\n" + block + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="a gated reduced build (make engine ... OUT=build/ci)")
    parser.add_argument("--name", required=True, help="docs/runs/<name>/")
    args = parser.parse_args()
    from attnvgg_runtime.readers.cpu import cpu_identity

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bad-inputs-{os.getpid()}"
    try:
        rows = run_all(args.build.resolve(), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    identity = cpu_identity()
    cpu = f"{identity['model']} ({', '.join(identity['isa'])}, {os.cpu_count()} cores)"
    out = REPO / "docs" / "runs" / args.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "bad-inputs.json").write_text(json.dumps({"cpu": cpu, "commit": commit, "rows": rows},
                                                    indent=2) + "\n")
    write_doc_block(args.name)
    print(f"{sum(r['holds'] for r in rows)} of {len(rows)} hold; written to {out} and {DOC}")
    if not all(r["holds"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
