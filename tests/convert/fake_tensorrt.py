"""A test double of the tensorrt 11 Python module: the calls attnvgg_export.convert.tensorrt_plan and
attnvgg_runtime.readers.tensorrt make, recorded, with the failure modes it must handle (parser errors,
plans that do not load).

It checks the API is used the TensorRT 11 way: create_network without flags (strongly typed is
the only mode), no precision builder flags, a profile per dynamic input, a timing cache round
trip. It computes nothing: engine numerics are covered by the GPU-marked tests."""

from __future__ import annotations

import ctypes
import enum
import json
import types

import numpy as np

__version__ = "11.4.0"


class FakeTensorRT(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("tensorrt")
        self.__version__ = __version__
        self.calls: list[tuple] = []
        self.parser_errors: list[tuple[str, str, str]] = []  # (node, op, description)
        self.loadable = True  # False: deserialize_cuda_engine returns None, as for another GPU
        self.version_compatible_plans = False  # True: plans load only with host code allowed
        self.num_classes = 10
        fake = self

        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        class ILogger:
            def __init__(self) -> None:
                pass

        ILogger.Severity = Severity

        class MemoryPoolType(enum.Enum):
            WORKSPACE = 0

        class ProfilingVerbosity(enum.Enum):
            LAYER_NAMES_ONLY = 0
            DETAILED = 1

        class HardwareCompatibilityLevel(enum.Enum):
            NONE = 0
            AMPERE_PLUS = 1

        class BuilderFlag(enum.Enum):  # TensorRT 11: no FP16/INT8/precision-constraint flags
            VERSION_COMPATIBLE = 0
            REFIT = 1

        class LayerInformationFormat(enum.Enum):
            ONELINE = 0
            JSON = 1

        class TensorIOMode(enum.Enum):
            NONE = 0
            INPUT = 1
            OUTPUT = 2

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = data
                fake.calls.append(("create_timing_cache", data))

            def serialize(self) -> bytes:
                return self.data + b"+timed"

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

        class BuilderConfig:
            def __init__(self) -> None:
                self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
                self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                assert isinstance(flag, BuilderFlag)
                fake.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data: bytes):
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                fake.calls.append(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return self.cache

        class Network:
            pass

        class Builder:
            def __init__(self, logger) -> None:
                assert isinstance(logger, ILogger)

            def create_network(self, flags=0):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return BuilderConfig()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",
                                   config.profiling_verbosity, config.hardware_compatibility_level))
                return b"PLAN:" + fake.parsed.encode()

        class ParserError:
            def __init__(self, node, op, desc) -> None:
                self._node, self._op, self._desc = node, op, desc

            def node_name(self):
                return self._node

            def node_operator(self):
                return self._op

            def desc(self):
                return self._desc

        class OnnxParser:
            def __init__(self, network, logger) -> None:
                self.errors: list[ParserError] = []

            def parse_from_file(self, path):
                fake.parsed = str(path)
                fake.calls.append(("parse_from_file", str(path)))
                self.errors = [ParserError(*e) for e in fake.parser_errors]
                return not self.errors

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

        class Inspector:
            def get_engine_information(self, fmt):
                assert fmt is LayerInformationFormat.JSON
                return json.dumps({"Layers": [{"Name": "conv1", "Precision": "fake"}]})

        class ExecutionContext:
            """Runs a stand-in network on host memory at the addresses it was given: logits[i, c]
            = mean(input[i]) + c. So a runner that sets the wrong shape, swaps the addresses or
            never calls execute_async_v3 gets wrong numbers back."""

            def __init__(self) -> None:
                self.shapes: dict[str, tuple] = {}
                self.addresses: dict[str, int] = {}

            def set_input_shape(self, name, shape):
                fake.calls.append(("set_input_shape", name, tuple(shape)))
                self.shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                assert name == "logits" and "input" in self.shapes, "input shape must be set first"
                return (self.shapes["input"][0], fake.num_classes)

            def set_tensor_address(self, name, address):
                fake.calls.append(("set_tensor_address", name))
                self.addresses[name] = int(address)
                return True

            def execute_async_v3(self, stream_handle):
                fake.calls.append(("execute_async_v3", stream_handle))
                x = _host_view(self.addresses["input"], self.shapes["input"])
                y = _host_view(self.addresses["logits"], self.get_tensor_shape("logits"))
                y[...] = x.mean(axis=(1, 2, 3))[:, None] + np.arange(fake.num_classes)
                return True

        class Engine:
            num_io_tensors = 2

            def create_engine_inspector(self):
                return Inspector()

            def create_execution_context(self):
                return ExecutionContext()

            def get_tensor_name(self, i):
                return ["input", "logits"][i]

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

            def get_tensor_profile_shape(self, name, profile):
                return fake.profile

        class Runtime:
            def __init__(self, logger) -> None:
                self.logger = logger
                self.engine_host_code_allowed = False

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize_cuda_engine", bytes(data)[:5],
                                   self.engine_host_code_allowed))
                if not fake.loadable:
                    self.logger.log(Severity.ERROR, "The engine plan file is generated on an "
                                    "incompatible device, expecting compute 9.0 got compute 8.6")
                    return None
                if fake.version_compatible_plans and not self.engine_host_code_allowed:
                    self.logger.log(Severity.ERROR, "Cannot deserialize engine with lean runtime "
                                    "since host code is not allowed")
                    return None
                return Engine()

        self.profile = [(1, 3, 32, 32), (1, 3, 224, 224), (32, 3, 448, 448)]
        for name, value in dict(locals()).items():
            if isinstance(value, type):
                setattr(self, name, value)
        self.Logger = ILogger

    def call_names(self) -> list[str]:
        return [c[0] for c in self.calls]


def _host_view(address: int, shape: tuple) -> np.ndarray:
    """The float32 array at a host address (what a CUDA kernel would read or write)."""
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


class HostBuffers:
    """attnvgg_runtime.readers.tensorrt.CudaBuffers on host memory, with a recognizable stream handle."""

    stream_handle = 0x5EED  # not 0: the runner must not use the legacy default stream

    def __init__(self) -> None:
        self.synchronized = 0

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32).copy()

    def empty(self, shape: tuple) -> np.ndarray:
        return np.full(shape, np.nan, dtype=np.float32)

    @staticmethod
    def address(buffer: np.ndarray) -> int:
        return buffer.ctypes.data

    def to_host(self, buffer: np.ndarray) -> np.ndarray:
        self.synchronized += 1
        return buffer.copy()
