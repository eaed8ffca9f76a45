"""A graph saved with intermediate tensors among its outputs, so that an ONNX Runtime session on
it returns them too: calibration's activations (calibrate.py) and the gate's module-by-module
explanation (attnvgg_export.verify.explain). Torch-free: the gate's process imports it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from attnvgg_runtime.readers import release_memory


def save_with_outputs(source: Path, tensors: Sequence[str], folder: Path) -> Path:
    """``source`` with ``tensors`` among its outputs, saved as ``folder``/augmented.onnx with its
    weights as one raw file beside it (protobuf serializes a 550 MB VGG16 in ~5 s and holds the
    bytes; this writes them in ~1 s), the loaded graph let go before returning: a session on it
    also returns those intermediate tensors (calibration's activations, explain's module
    outputs), and its copy of the weights is the only one left."""
    model = onnx.load(str(source))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors
                              if t not in present)
    augmented = Path(folder) / "augmented.onnx"
    onnx.save_model(model, str(augmented), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="augmented.weights")
    del model
    release_memory()  # the graph's copy, before a session reads the weights again
    return augmented

