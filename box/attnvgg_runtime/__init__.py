"""attnvgg-runtime: the box side of an attnvgg-export build, without torch.

What a box that runs the artifacts needs: the manifest contract (manifest.py), the readers
(ONNX Runtime, OpenVINO, TensorRT where present: readers/), the gate's measures, budgets and
per-artifact check and the golden I/O reader (verify/), the box's bench and the classifier. The
toolchain (attnvgg-export) imports these: one definition of every measure on both sides.

    from attnvgg_runtime import Classifier, verify, bench
    top5 = Classifier("build/se/manifest.json").classify_files(["cat.jpg"])
    report = verify("build/se/manifest.json")      # verify.json's content; report["passed"]
"""

from attnvgg_runtime.bench import bench_box as bench
from attnvgg_runtime.classify import Classifier, load_manifest
from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.probe import box_identity as probe
from attnvgg_runtime.verify.on_box import Restriction
from attnvgg_runtime.verify.on_box import verify_build as verify

# (the submodule attnvgg_runtime.classify keeps its name: its function classify() is not re-exported)
__all__ = ["Classifier", "Restriction", "ToolchainError", "bench", "load_manifest", "probe", "verify"]
