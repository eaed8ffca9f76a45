"""`attnvgg-runtime`: the box side of a build, one command with subcommands.

    attnvgg-runtime probe                                   # what this box is, as the numerics see it
    attnvgg-runtime verify build/se/manifest.json           # the gate's checks on this box's kernels
    attnvgg-runtime bench build/se/manifest.json            # time every CPU artifact here
    attnvgg-runtime classify build/se/manifest.json a.jpg   # top-5, with what ran and why on stderr
    attnvgg-runtime classify model.int8-cpu.frame.onnx a.jpg --allow-unverified   # the file alone
    attnvgg-runtime signature build/se/manifest.json --key public.pem   # the build's signature

Exit codes: 0 done (verify: every reading passed), 1 verify found a breach, 2 a usage or input
error (the message names the file or value and the fix; verify: a reader, artifact or case it
does not know, or nothing it could read; any command: a build that is not signed by the key
--require-signature names, or was altered since).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from attnvgg_runtime.errors import ToolchainError


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1 (the toolchain's command uses it too)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return number


def _batches(value: str) -> tuple[int, ...]:
    batches = tuple(positive_int(b) for b in _csv(value))
    if not batches:
        raise argparse.ArgumentTypeError(f"{value!r} names no batch size (e.g. 1,8)")
    return batches


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnvgg-runtime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="this box: CPU, ISA, int8 kernels, runtimes (JSON with --json)") \
        .add_argument("--json", action="store_true")
    verify = sub.add_parser("verify", help="re-run the gate's checks on this box (exit 1 on a breach)")
    verify.add_argument("manifest", type=Path)
    verify.add_argument("--case", type=_csv, help="only these golden cases (comma-separated), e.g. heldout")
    verify.add_argument("--artifact", type=_csv, help="only artifacts whose path matches these patterns")
    verify.add_argument("--reader", type=_csv, help="only these readers: onnxruntime, openvino, ...")
    verify.add_argument("--images", type=positive_int,
                        help="only the first N images of each case (whole batches)")
    verify.add_argument("--allow-plan-code", action="store_true",
                        help="let TensorRT plans run the host code they embed (version-compatible "
                        "plans): only for plans you trust; off by default, never by the manifest")
    bench = sub.add_parser("bench", help="time every CPU artifact under every runtime installed here")
    bench.add_argument("manifest", type=Path)
    bench.add_argument("--batches", type=_batches, default=(1, 8), help="comma-separated (default 1,8)")
    bench.add_argument("--seconds", type=_seconds, default=5.0, help="per artifact and batch (default 5)")
    bench.add_argument("--no-first-result", action="store_true",
                       help="leave out each artifact's cold start (a fresh process's first result)")
    classify = sub.add_parser("classify", help="top-5 classes of image files")
    classify.add_argument("manifest", type=Path, help="a build's manifest.json, or one model file "
                          "(.onnx, .ort, .xml) read by its own metadata (with --allow-unverified)")
    classify.add_argument("images", type=Path, nargs="+")
    classify.add_argument("--precision", choices=["fp32", "bf16", "int8"], default=None,
                          help="default: the fastest this box's bench timed, else the build's "
                          "recommendation, else fp32")
    classify.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None)
    classify.add_argument("--top", type=positive_int, default=5)
    classify.add_argument("--allow-unverified", action="store_true",
                          help="run an artifact without a passing verdict for its bytes (says so "
                          "on stderr); by default it is refused")
    signature = sub.add_parser("signature", help="check the build's signature (build.sig) with a "
                               "public key; lists what it covers")
    signature.add_argument("manifest", type=Path)
    signature.add_argument("--key", type=Path, required=True, help="the signer's public key (PEM)")
    for command in (verify, bench, classify):
        command.add_argument("--require-signature", metavar="PUBLIC_KEY", type=Path,
                             help="refuse the build unless build.sig, made with this key's private "
                             "half, covers it unaltered (attnvgg-export sign)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "signature" or getattr(args, "require_signature", None):
            from attnvgg_runtime.signing import verify_signature

            signed = verify_signature(args.manifest, args.key if args.command == "signature"
                                      else args.require_signature)
            print(f"{args.manifest.parent}: signature verified ({len(signed)} files: the manifest "
                  f"and every file it lists)", file=sys.stderr)
            if args.command == "signature":
                return 0
        if args.command == "probe":
            from attnvgg_runtime.probe import box_identity, describe

            box = box_identity()
            print(json.dumps(box, indent=2) if args.json else describe(box))
            return 0
        if args.command == "verify":
            from attnvgg_runtime.verify.on_box import Restriction, verify_build

            restriction = Restriction(args.case, args.artifact, args.reader, args.images)
            report = verify_build(args.manifest, restriction=restriction,
                                  log=functools.partial(print, flush=True),
                                  plan_code_allowed=args.allow_plan_code)
            return 0 if report["passed"] else 1
        if args.command == "bench":
            from attnvgg_runtime.bench import bench_box

            bench_box(args.manifest, args.batches, args.seconds, log=functools.partial(print, flush=True),
                      first_result=not args.no_first_result)
            return 0
        from attnvgg_runtime.classify import MODEL_SUFFIXES, classify, classify_model_file

        if args.manifest.suffix in MODEL_SUFFIXES:
            results = classify_model_file(args.manifest, args.images, args.top, args.allow_unverified)
        else:
            results = classify(args.manifest, args.images, args.precision, args.top, args.runtime,
                               args.allow_unverified)
    except (ToolchainError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, top in zip(args.images, results, strict=True):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
