"""`attnvgg-export <stage>`: each stage of the pipeline as a subcommand (the Makefile calls them,
so that Make rebuilds only what changed), and `attnvgg-export engine`, the whole chain
(attnvgg_export.build). Library errors become one clear line and exit 2; a failed gate exits 1."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from attnvgg_export.models import VARIANT_NAMES, ConfigError, ToolchainError
from attnvgg_runtime.cli import positive_int

EXIT_ERROR = 2


def _setting(variable: str, parse, allowed_value, allowed: str):
    """An argparse type for a Make variable's value: refused, naming the variable and what it may
    be, where it does not parse or is not allowed; never replaced by a default."""
    def check(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not allowed_value(value):
            raise argparse.ArgumentTypeError(f"{variable}={text!r} is not allowed: {allowed}")
        return value

    return check


_width = _setting("WIDTH_MULT", float, lambda v: 0 < v < float("inf"),
                  "a channel-width multiplier > 0 (1.0: the full-size model, 0.125: a reduced one); "
                  "leave it unset for 1.0")
_side = _setting("IMG_SIZE", int, lambda v: v >= 32 and v % 32 == 0,
                 "the size the model was trained at, a multiple of 32 that is at least 32 (five 2x2 "
                 "pools), e.g. 224")
_classes = _setting("NUM_CLASSES", int, lambda v: v >= 1, "a whole number of classes, at least 1 (e.g. 1000)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", required=True, help=f"one of: {', '.join(VARIANT_NAMES)}")
    p.add_argument("--num-classes", type=_classes, default=1000)
    p.add_argument("--width-mult", type=_width, default=None,
                   help="channel-width multiplier (default 1.0, the full-size model)")


def _width_mult(args: argparse.Namespace) -> float:
    return 1.0 if args.width_mult is None else args.width_mult


def _cmd_card(args: argparse.Namespace) -> int:
    from attnvgg_export.models.card import card_markdown, model_card

    card = model_card(args.variant, args.img_size, args.num_classes, _width_mult(args))
    markdown = card_markdown(card)
    if args.out:
        from attnvgg_runtime.files import write_text_atomic

        out = Path(args.out)
        write_text_atomic(out / "card.md", markdown)
        write_text_atomic(out / "card.json", json.dumps(card.to_json(), indent=2) + "\n")
    print(json.dumps(card.to_json(), indent=2) if args.json else markdown, end="")
    return 0


def _axis(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN,OPT,MAX (e.g. 32,224,448)")
    return values


def _cmd_export(args: argparse.Namespace) -> int:
    from attnvgg_export.graphs.export import (
        ExportConfig,
        batch_range,
        default_sides,
        export_to_folder,
        image_range,
        read_labels,
    )

    opt = args.img_size
    config = ExportConfig(
        variant=args.variant, num_classes=args.num_classes, model_width=_width_mult(args),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None, reset_head=args.reset_head,
        opset=args.opset,
        batch=batch_range(*args.batch) if args.batch else None,
        height=image_range("height", *args.height) if args.height else (
            image_range("height", *default_sides(opt)) if opt is not None else None),
        width=image_range("width", *args.width) if args.width else (
            image_range("width", *default_sides(opt)) if opt is not None else None),
        attention_memory_budget=int(args.attention_budget_gib * 2**30),
        simplify=not args.no_simplify,
        labels=read_labels(Path(args.labels)) if args.labels else None)
    export_to_folder(config, Path(args.out) / args.variant)
    return 0


def _cmd_precision(args: argparse.Namespace) -> int:
    from attnvgg_export.graphs.precision import PrecisionConfig, build_precision_graphs

    settings = dict(
        calib_source="noise" if args.calib_noise else args.calib_dir,
        calib_count=args.calib_count, tuning_count=args.tuning_count,
        heldout_count=args.heldout_count, method=args.method,
        metric=args.metric, margin_target=args.margin_target,
        agreement_target=args.agreement_target, max_fallback=args.max_fallback,
        largest_share=args.calib_largest_share, accuracy_aim=not args.no_accuracy_aim,
        tolerances=Path(args.tolerances) if args.tolerances else None)
    # unset options keep the stage's own defaults (the parser imports nothing heavy to know them)
    config = PrecisionConfig(**{k: v for k, v in settings.items() if v is not None})
    build_precision_graphs(Path(args.manifest), config)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from attnvgg_export.bench.bench import BenchConfig, run_bench

    config = BenchConfig(batches=tuple(args.batches), seconds_per_case=args.seconds,
                         torch_compile=not args.no_compile, first_result=not args.no_first_result)
    run_bench(Path(args.manifest), config, plan_code_allowed=args.allow_plan_code)
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    from attnvgg_export.verify.cluster import cluster_from_environment
    from attnvgg_export.verify.gate import run_parity

    report = run_parity(Path(args.manifest),
                        tolerances=Path(args.tolerances) if args.tolerances else None,
                        only=set(args.artifacts) if args.artifacts else None,
                        cases=set(args.cases) if args.cases is not None else None,
                        eval_dir=args.eval_dir, strict_accuracy=args.strict_accuracy,
                        images=args.images, thorough=args.thorough,
                        cluster=cluster_from_environment(args.eval_cluster),
                        plan_code_allowed=args.allow_plan_code)
    skipped, warnings = report.skipped(), report.warnings()
    for warning in warnings:  # passed, not proven: each on its own line, the count on the last
        print(f"WARNING: {warning}")
    if report.passed:
        print(f"parity: passed ({report.verified} artifact readings verified)"
              + (f", {len(warnings)} warnings ({warning_kinds(warnings)}; listed above and in "
                 f"parity.json), first: {warnings[0]}" if warnings else "")
              + (f"; {len(skipped)} not verified on this machine: "
                 f"{', '.join(s.split(': ')[0] for s in skipped)}" if skipped else ""))
        return 0
    failures = report.failures()
    print(f"parity: FAILED, {len(failures)} breaches; first: {failures[0]}"
          + (f"; and {len(warnings)} warnings" if warnings else ""), file=sys.stderr)
    return 1


def warning_kinds(warnings: list[str]) -> str:
    """"3 accuracy not resolvable, 1 not gated": what the warnings are, counted."""
    kinds = {"accuracy not resolvable": sum("not resolvable" in w for w in warnings),
             "not gated": sum("not gated here" in w for w in warnings)}
    return ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n)


def _cmd_engine(args: argparse.Namespace) -> int:
    from attnvgg_export.api import GateFailed, build

    try:
        result = build(args.variant, checkpoint=args.checkpoint, calib_dir=args.calib_dir,
                       eval_dir=args.eval_dir, out=args.out, num_classes=args.num_classes,
                       width_mult=_width_mult(args), img_size=args.img_size,
                       backend=args.backend, bench_seconds=args.seconds)
    except GateFailed as e:
        print(f"engine: the gate FAILED: {e}", file=sys.stderr)
        return 1
    ship = ", ".join(f"{target}: {s.artifact} ({s.precision}, {s.speedup_vs_eager:.2f}x eager)"
                     for target, s in result.ship.items())
    print(f"engine: passed ({len(result.verdicts)} readings, {len(result.warnings)} warnings); "
          f"ship {ship or 'nothing recommended'}; report {result.report}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from attnvgg_export.verify.explain import explain_artifact

    explain_artifact(Path(args.manifest), args.artifact, args.images)
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from attnvgg_export.verify.selftest import run_selftest, write_planted_copy

    if args.plant:
        if not args.into:
            raise ConfigError("--plant needs --into FOLDER: where to write the planted copy")
        write_planted_copy(Path(args.manifest), args.plant, Path(args.into))
        return 0
    run_selftest(Path(args.manifest), converted_only=args.converted_only)
    return 0


def _cmd_engines(args: argparse.Namespace) -> int:
    from attnvgg_export.convert.engines import build_engines

    build_engines(Path(args.manifest), args.backend)
    return 0


def _cmd_triton(args: argparse.Namespace) -> int:
    from attnvgg_export.convert.triton import manifest_to_triton

    manifest = Path(args.manifest)
    manifest_to_triton(manifest, Path(args.repository or manifest.parent / "triton"))
    return 0


def _password(variable: str | None) -> str | None:
    """A key's password from the environment variable named (never from the command line, where
    other users of the machine see it)."""
    if variable is None:
        return None
    import os

    if not os.environ.get(variable):
        raise ConfigError(f"--password-env {variable}: that environment variable is unset or empty; "
                          f"export it with the key's password, or leave --password-env out")
    return os.environ[variable]


def _cmd_keygen(args: argparse.Namespace) -> int:
    from attnvgg_runtime.signing import make_key_pair

    private, public = make_key_pair(Path(args.out), _password(args.password_env))
    print(f"keygen: {private} (keep it secret: whoever holds it can sign builds) and {public} "
          f"(give it to the boxes: --require-signature {public})")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from attnvgg_runtime.signing import sign_build, signed_files

    signature = sign_build(Path(args.manifest), Path(args.key), _password(args.password_env))
    print(f"sign: {signature} covers {len(signed_files(Path(args.manifest)))} files (the manifest "
          f"and every file it lists)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnvgg-export", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    card = sub.add_parser("card", help="parameters, MACs and activation memory of a variant")
    _add_model_args(card)
    card.add_argument("--img-size", type=_side, default=224)
    card.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    card.add_argument("--out", help="also write card.md and card.json into this folder")
    card.set_defaults(run=_cmd_card)

    export = sub.add_parser("export", help="ONNX (fp32, dynamic batch/H/W), verified, simplified")
    _add_model_args(export)
    export.add_argument("--checkpoint", help="weights to load (.pt/.pth/.safetensors); default: "
                        "the seeded default initialization")
    export.add_argument("--reset-head", action="store_true",
                        help="keep the model's own last layer when the checkpoint's classes differ")
    export.add_argument("--opset", type=int, default=18, help="18 (default) to 21")
    export.add_argument("--img-size", type=_side, default=None,
                        help="the opt H and W, the size the model was trained at (sides default "
                        "to min(32, opt)..opt..2*opt: 32..224..448 at 224)")
    export.add_argument("--batch", type=_axis, help="MIN,OPT,MAX (default 1,1,32)")
    export.add_argument("--height", type=_axis, help="MIN,OPT,MAX, multiples of 32 "
                        "(default min(32,opt),opt,2*opt)")
    export.add_argument("--width", type=_axis, help="MIN,OPT,MAX, multiples of 32")
    export.add_argument("--attention-budget-gib", type=float, default=4.0,
                        help="sa only: largest attention map allowed")
    export.add_argument("--no-simplify", action="store_true")
    export.add_argument("--labels", help="class names, one per line, recorded in the manifest")
    export.add_argument("--out", default="build", help="output root; files go to OUT/VARIANT/")
    export.set_defaults(run=_cmd_export)

    precision = sub.add_parser("precision", help="fp16 + int8 (TensorRT, CPU) graphs, ORT models")
    precision.add_argument("--manifest", required=True, help="manifest.json written by export")
    precision.add_argument("--calib-dir", help="image folder or .npy/.npz; default: photographs "
                           "bundled with scikit-image")
    precision.add_argument("--calib-noise", action="store_true",
                           help="calibrate on random noise (only for smoke tests)")
    precision.add_argument("--calib-count", type=positive_int, help="images to calibrate on (default 256)")
    precision.add_argument("--tuning-count", type=positive_int, help="other images, on which the layer "
                           "fallback chooses its layers (default 64)")
    precision.add_argument("--heldout-count", type=positive_int, help="other images still, on which only "
                           "the parity gate measures (default 64)")
    precision.add_argument("--method", choices=["minmax", "entropy", "percentile"],
                           help="calibration method (default percentile)")
    precision.add_argument("--metric", choices=["margin", "top1", "cosine"],
                           help="what the layer fallback aims at (default margin: the parity "
                           "gate's int8 budgets, --margin-target times over, on the tuning images "
                           "at every shape the gate checks; top1/cosine: agreement at the opt size)")
    precision.add_argument("--margin-target", type=float,
                           help="keep layers in float until every int8 budget holds this many "
                           "times over (default 1.2)")
    precision.add_argument("--agreement-target", type=float,
                           help="with --metric top1/cosine: fall back until int8 agrees this "
                           "often (default 0.99)")
    precision.add_argument("--tolerances", help="the gate's tolerances.toml, if not the default "
                           "(the fallback aims at its int8 budget)")
    precision.add_argument("--max-fallback", type=int, default=6,
                           help="most layers kept in float, of both aims together")
    precision.add_argument("--no-accuracy-aim", action="store_true",
                           help="where the tuning images have labels (CALIB_DIR with class "
                           "folders) and the weights are trained, the fallback first keeps in "
                           "float the layers with the largest share of the top-1 drop until it "
                           "is within the int8 accuracy_drop_max; this turns that off")
    precision.add_argument("--calib-largest-share", type=float, default=0.0,
                           help="share of calibration images taken at the largest declared size "
                           "(for graphs served far above their opt size)")
    precision.set_defaults(run=_cmd_precision)

    parity = sub.add_parser("parity", help="the CI gate: every artifact against eager PyTorch, on "
                            "the held-out images the precision stage set aside")
    parity.add_argument("--manifest", required=True)
    parity.add_argument("--tolerances",
                        help="a tolerances.toml (default: attnvgg_export/verify/tolerances.toml)")
    parity.add_argument("--eval-dir", metavar="DIR_OR_NPZ",
                        help="labelled images (ImageFolder layout, or .npz with images and labels), "
                             "kept apart from calibration: every artifact's top-1 drop against "
                             "eager, with a 95%% interval, against accuracy_drop_max")
    parity.add_argument("--eval-cluster", metavar="auto|ADDRESS",
                        help="read EVAL_DIR on a Ray cluster: auto (a local one) or its address "
                        "(default: EVAL_CLUSTER, then RAY_ADDRESS; neither: in this process; "
                        "docs/toolchain.md)")
    parity.add_argument("--strict-accuracy", action="store_true",
                        help="fail an EVAL_DIR drop that its images cannot resolve (by default it "
                        "fails only where it is over budget, with confidence or by its point "
                        "estimate, and an unresolved one is reported with the images it would take)")
    parity.add_argument("--artifacts", nargs="+", metavar="PATH",
                        help="gate only these artifacts (paths as in the manifest); the verdict "
                        "then covers only them")
    parity.add_argument("--cases", nargs="*", metavar="CASE",
                        help="only these corner shapes (e.g. 2x3x448x448; none: no corner) besides "
                        "the held-out images at the opt size, which always run; the verdict then "
                        "covers only them")
    parity.add_argument("--images", type=positive_int, metavar="N",
                        help="only the first N held-out images (the corners follow them); the "
                        "verdict then covers only them (an emulated CPU in CI)")
    parity.add_argument("--thorough", action="store_true",
                        help="every graph on every image of every corner shape, the max batch as "
                        "a corner of its own, eager run again rather than read from "
                        "eager-references.npz: about 1.8x the time, the same verdicts "
                        "(docs/toolchain.md)")
    parity.set_defaults(run=_cmd_parity)

    engine = sub.add_parser("engine", help="the whole chain, as `make engine` (attnvgg_export.build)")
    _add_model_args(engine)
    engine.add_argument("--checkpoint", help="weights to load (.pt/.pth/.safetensors)")
    engine.add_argument("--img-size", type=_side, default=224, help="the size the model was trained at")
    engine.add_argument("--calib-dir", help="images to calibrate on (default: bundled photographs)")
    engine.add_argument("--eval-dir", help="labelled images to judge accuracy on")
    engine.add_argument("--backend", choices=["auto", "tensorrt", "ort"], default="auto")
    engine.add_argument("--seconds", type=float, default=10.0, help="bench time per runtime and batch")
    engine.add_argument("--out", default="build", help="output root; files go to OUT/VARIANT/")
    engine.set_defaults(run=_cmd_engine)

    explain = sub.add_parser("explain", help="where an artifact's error enters: each module's "
                             "output against eager PyTorch, on the held-out images")
    explain.add_argument("--manifest", required=True)
    explain.add_argument("--artifact", required=True, help="an ONNX graph of the build, e.g. "
                         "model.int8-cpu.onnx")
    explain.add_argument("--images", type=positive_int, default=8, help="held-out images to measure on")
    explain.set_defaults(run=_cmd_explain)

    selftest = sub.add_parser("selftest", help="plant known bugs into copies of the build's "
                              "artifacts and show the gate fails each one")
    selftest.add_argument("--manifest", required=True)
    selftest.add_argument("--converted-only", action="store_true",
                          help="only the bugs planted into converted files (.ort, IR .bin), gated "
                          "on the held-out images at the opt size: what CI runs on the full-size "
                          "build, where the whole self-test would take most of an hour")
    selftest.add_argument("--plant", metavar="BUG", help="only write a copy of the build with this "
                          "bug planted (its name as the self-test prints it), into --into: for a "
                          "box's verify to catch (make test-arm)")
    selftest.add_argument("--into", metavar="FOLDER", help="where --plant writes the copy (a new folder)")
    selftest.set_defaults(run=_cmd_selftest)

    engines = sub.add_parser("engines", help="TensorRT plans where a GPU and tensorrt exist")
    engines.add_argument("--manifest", required=True)
    engines.add_argument("--backend", choices=["auto", "tensorrt", "ort"], default="auto")
    engines.set_defaults(run=_cmd_engines)

    triton = sub.add_parser("triton", help="a Triton Inference Server model repository")
    triton.add_argument("--manifest", required=True)
    triton.add_argument("--repository", help="default: beside the manifest, in triton/")
    triton.set_defaults(run=_cmd_triton)

    keygen = sub.add_parser("keygen", help="a key pair for signing builds (private.pem, public.pem)")
    keygen.add_argument("--out", required=True, help="folder for private.pem (0600) and public.pem")
    sign = sub.add_parser("sign", help="sign a build: the manifest and every file it lists (build.sig)")
    sign.add_argument("--manifest", required=True)
    sign.add_argument("--key", required=True, help="the private key (PEM), from keygen")
    for command in (keygen, sign):
        command.add_argument("--password-env", metavar="VAR",
                             help="the key's password is in this environment variable")
    keygen.set_defaults(run=_cmd_keygen)
    sign.set_defaults(run=_cmd_sign)

    bench = sub.add_parser("bench", help="latency and throughput of every runtime, vs eager")
    bench.add_argument("--manifest", required=True)
    bench.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    bench.add_argument("--seconds", type=float, default=10.0, help="time per runtime and batch")
    bench.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    bench.add_argument("--no-first-result", action="store_true",
                       help="skip each CPU artifact's cold start (a fresh process's first result)")
    for command in (parity, bench):
        command.add_argument("--allow-plan-code", action="store_true",
                             help="let TensorRT plans run the host code they embed (version-compatible "
                             "plans); only for plans you trust: off by default, never by the manifest")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ToolchainError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
