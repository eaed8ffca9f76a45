"""What the graphs are converted to for their runtimes: ONNX Runtime's .ort format, OpenVINO IR,
TensorRT plans (the engines stage), and a Triton model repository."""
