"""attnvgg-export: a trained attention-augmented VGG16 -> artifacts for every runtime, with the
proof that they compute what was trained, and how fast.

    import attnvgg_export
    result = attnvgg_export.build("se", checkpoint="se.safetensors", img_size=224)   # docs/api.md

One top-level package: the variants (models/), calibration data (calibration/) and the pipeline,
one sub-package per stage (`make engine` and `attnvgg-export engine` run them in this order):

    graphs/    export (torch -> ONNX, verified), fp16, int8 Q/DQ with calibration and layer fallback
    convert/   what the engines stage makes from the graphs: .ort, OpenVINO IR, TensorRT plans, Triton
    verify/    the gate: measures, budgets, shape cases, structure checks, explain, self-test
    bench/     speed against eager PyTorch in one run, and the recommendation
    report/    report.md and its plots, from the JSON files the stages wrote
    manifest/  what invalidates which verdict when artifacts are rewritten

    runtime/   eager PyTorch, the reference reader, and the GPU probe

The manifest contract, the ONNX Runtime, OpenVINO, TensorRT and emulated readers, the measures,
the judgement against a budget, the per-artifact check and the golden I/O reader are the
box-side package's (box/attnvgg_runtime, installed beside this one): the gate and a target box
run the same code. Imports go one way (tests/test_import_rules.py holds it): attnvgg_runtime imports
nothing of the toolchain; verify/ and runtime/ never import graphs/ or convert/; report/ reads
files only; torch is imported at module level only by graphs/ and runtime/eager.py. (The stage
that makes graphs is graphs/, not build/: pytest's default norecursedirs, ruff's default exclude
and the usual .gitignore all skip a folder named build, which would drop its tests and files.)
"""

from attnvgg_runtime.lazy import lazy_api

# the API, loaded on first use (PEP 562): `import attnvgg_export` costs nothing until called
_API = {"build": "api", "read_result": "api", "BuildResult": "api", "Verdict": "api", "Speed": "api",
        "GateFailed": "api"}

__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
