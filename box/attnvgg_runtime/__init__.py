"""attnvgg-runtime: the box side of an attnvgg-export build, without torch.

What a box that runs the artifacts needs: the manifest contract (manifest.py), the readers
(ONNX Runtime, OpenVINO, TensorRT where present: readers/), the gate's measures, budgets and
per-artifact check and the golden I/O reader (verify/), the box's bench and the classifier. The
toolchain (attnvgg-export) imports these: one definition of every measure on both sides.

    from attnvgg_runtime import Classifier, verify_build
    top5 = Classifier("build/se/manifest.json").classify_files(["cat.jpg"])
    report = verify_build("build/se/manifest.json")    # verify.json's content; report["passed"]

The API loads on first use (PEP 562): the toolchain, which imports the submodules it needs,
does not pay for the classifier's imports.
"""

from attnvgg_runtime.lazy import lazy_api

# name -> submodule; each under its own name, none a submodule's name (classify, bench, probe,
# verify stay the modules)
_API = {"Classifier": "classify", "load_manifest": "classify", "bench_box": "bench",
        "box_identity": "probe", "verify_build": "verify.on_box", "Restriction": "verify.on_box",
        "ToolchainError": "errors"}

__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
