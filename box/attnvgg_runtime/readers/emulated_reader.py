"""The child side of attnvgg_runtime.readers.emulated: one reader, run by qemu as the emulated CPU,
batches in and outputs out as .npy arrays on stdin and stdout.

    python -m attnvgg_runtime.readers.emulated_reader onnxruntime|openvino PATH [--exact-int8] [--hint f32]
        [--optimization ORT_ENABLE_EXTENDED] [--convert]
    python -m attnvgg_runtime.readers.emulated_reader probe   # prints 1 where int8 pair sums saturate
"""

from __future__ import annotations

import sys

from attnvgg_runtime.readers.cpu import int8_products_saturate
from attnvgg_runtime.readers.emulated import read_array, write_array
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.readers.openvino import OpenVinoRunner  # the same readers as the native gate


def main(argv: list[str]) -> None:
    if argv[0] == "probe":
        print(int(int8_products_saturate()))
        return
    reader, path = argv[0], argv[1]
    hint = argv[argv.index("--hint") + 1] if "--hint" in argv else "f32"
    level = argv[argv.index("--optimization") + 1] if "--optimization" in argv else None
    # ONNX Runtime's arena kept here (the verifiers turn it off to save memory): under qemu every
    # freshly mapped page is an emulated fault, and the builds emulated in CI are small
    run = (OnnxRuntimeRunner(path, exact_int8="--exact-int8" in argv, optimization=level)
           if reader == "onnxruntime" else OpenVinoRunner(path, hint, convert="--convert" in argv))
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while source.peek(1):
        write_array(sink, run(read_array(source)))


if __name__ == "__main__":
    main(sys.argv[1:])
