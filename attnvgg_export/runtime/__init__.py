"""The toolchain's own readers: eager PyTorch (eager.py, the reference, the only module that
imports torch) and the GPU probe that picks the engines backend (gpu_probe.py). ONNX Runtime,
OpenVINO, TensorRT and the qemu-emulated CPU readers are the box-side package's
(attnvgg_runtime.readers): the gate and the box read artifacts with the same code."""
