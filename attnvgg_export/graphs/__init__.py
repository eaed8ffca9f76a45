"""Stages that make graphs: export (eager -> verified fp32 ONNX), then precision (fp16, and the
two int8 graphs with calibration and layer fallback). The only part besides runtime/eager.py that
imports torch at module level."""
