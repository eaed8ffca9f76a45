"""The labelled evaluation on a Ray cluster (the ``ray`` extra): Ray Data's batch inference, the
images of each unit read and decoded by tasks, each reading's runner held by a pool of actors
(one reader session per actor), the results streamed back to this process, which alone writes
the result store (attnvgg_export.verify.results).

Named by ``RAY_ADDRESS`` (an existing cluster: every node must see the build folder and EVAL_DIR
at the same paths, a shared file system, and have this toolchain installed; a worker checks
each artifact's and each image's sha256 before it reads them, so a node with another copy is
an error, not another result) or ``EVAL_CLUSTER=auto`` (a local cluster of this machine's
cores, started and stopped by the gate). ``EVAL_WORKER_CPUS`` (default 1): the cores, and
reader threads, of each actor;
``EVAL_WORKERS``: how many actors (default: the cluster's cores over that). Each actor holds one
session and one unit at a time: its memory does not grow with the number of images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from attnvgg_export.verify.results import ImageResult
from attnvgg_runtime.errors import ConfigError
from attnvgg_runtime.readers import runtime_module

if TYPE_CHECKING:
    from attnvgg_export.calibration.evaluation import Unit
    from attnvgg_export.calibration.preprocessing import Preprocessing
    from attnvgg_export.verify.reading import RunnerSpec

INSTALL_HINT = "pip install 'attnvgg-export[ray]' (Ray Data), or leave RAY_ADDRESS and EVAL_CLUSTER unset"


LOCAL = "local"  # a cluster this process starts on this machine's cores


def cluster_from_environment(named: str | None = None) -> str | None:
    """Where EVAL_DIR is read: LOCAL (``named`` or EVAL_CLUSTER is ``auto``), a Ray address
    (``named``, EVAL_CLUSTER, then RAY_ADDRESS: ``auto`` there is Ray's, an existing cluster on
    this machine), or None: in this process."""
    named = named or os.environ.get("EVAL_CLUSTER")
    if named:
        return LOCAL if named in ("auto", LOCAL) else named
    return os.environ.get("RAY_ADDRESS") or None


def _positive(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r}: give a whole number of at least 1")
    return int(value)


def _unit_row(unit: Unit) -> dict:
    return {"unit": json.dumps(asdict(unit))}


def _unit_of(row: dict) -> Unit:
    from attnvgg_export.calibration.evaluation import Unit

    fields = json.loads(row["unit"])
    return Unit(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _decode(row: dict, pre: Preprocessing) -> dict:
    """Ray Data's read stage: one unit's images decoded, carried as bytes with their shape."""
    from attnvgg_export.calibration.evaluation import decode_unit

    images, decoded = decode_unit(_unit_of(row), pre)
    return {"unit": row["unit"], "images": images.tobytes(), "shape": json.dumps(images.shape),
            "decoded": json.dumps(decoded.tolist())}


class _ReadingActor:
    """One reader session for the actor's life; a unit per call."""

    def __init__(self, spec: RunnerSpec):
        from attnvgg_export.verify.reading import cpu_key, make_runner
        from attnvgg_runtime.readers import reader_version

        self.runner = make_runner(spec)
        self.cpu = cpu_key(spec.threads)
        self.version = reader_version(spec.reading.reader)

    def __call__(self, batch: dict) -> dict:
        from attnvgg_export.verify.reading import read_decoded

        units, results = [], []
        for unit_json, data, shape, decoded in zip(batch["unit"], batch["images"], batch["shape"],
                                                   batch["decoded"], strict=True):
            unit = _unit_of({"unit": unit_json})
            images = np.frombuffer(data, np.float32).reshape(json.loads(shape))
            read = read_decoded(self.runner, unit, images, np.asarray(json.loads(decoded), bool))
            units.append(unit_json)
            results.append(json.dumps([[r.image_sha256, r.label, r.top5] for r in read]))
        return {"unit": units, "results": results, "cpu": [self.cpu] * len(units),
                "version": [self.version] * len(units)}


def _cpu_of_node(threads: int) -> str:
    from attnvgg_export.verify.reading import cpu_key

    return cpu_key(threads)


class RayCluster:
    """A connection to the named cluster for one evaluation; ``close`` lets it go (and stops a
    local one this process started)."""

    def __init__(self, address: str, log=print):
        self.ray = runtime_module("ray", INSTALL_HINT, ConfigError)
        runtime_module("ray.data", INSTALL_HINT, ConfigError)
        self.address = address
        local = address == LOCAL
        init = {"num_cpus": os.cpu_count()} if local else {"address": address}
        self._ray_address = os.environ.pop("RAY_ADDRESS", None) if local else None  # restored on close
        try:
            self.ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                          configure_logging=False, **init)
        except ConnectionError as e:
            raise ConfigError(f"cannot reach the Ray cluster at {address} ({e}); check RAY_ADDRESS, "
                              f"or unset it to evaluate in this process") from None
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines
        context = self.ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts images across workers (evaluate.Progress)
        context.verbose_progress = False
        context.print_on_execution_start = False
        self.worker_cpus = _positive("EVAL_WORKER_CPUS", 1)
        total = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = _positive("EVAL_WORKERS", max(1, total // self.worker_cpus))
        self.cpus = self._node_cpus()
        if not self.cpus:  # nothing could read: an error, never an evaluation of nothing
            raise ConfigError(f"the Ray cluster at {address} has no live node with CPUs to read on")
        if len(self.cpus) > 1:
            log(f"EVAL_DIR: the cluster's nodes have {len(self.cpus)} CPU models ({', '.join(self.cpus)}); "
                f"each result is kept with the CPU that computed it")

    def describe(self) -> str:
        where = "a local Ray cluster" if self.address == LOCAL else f"Ray at {self.address}"
        return f"{where}, {self.workers} workers of {self.worker_cpus} CPU"

    def _node_cpus(self) -> list[str]:
        """The CPU of every live node (a result is keyed by the CPU that computed it)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self.ray.remote(num_cpus=0)(_cpu_of_node)
        nodes = [n["NodeID"] for n in self.ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
        return sorted(set(self.ray.get([
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                self.worker_cpus)
            for node in nodes])))

    def run(self, spec: RunnerSpec, units: list[Unit], pre: Preprocessing,
            on_unit: Callable[[Unit, list[ImageResult], str], None]) -> None:
        """Every unit read by the actor pool; each result handed to ``on_unit`` as it arrives."""
        from dataclasses import replace

        data = self.ray.data
        spec = replace(spec, threads=self.worker_cpus)
        by_index = {u.index: u for u in units}
        dataset = (data.from_items([_unit_row(u) for u in units], override_num_blocks=len(units))
                   .map(_decode, fn_kwargs={"pre": pre}, num_cpus=0,
                        compute=data.TaskPoolStrategy(size=self.workers))
                   .map_batches(_ReadingActor, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                                num_cpus=self.worker_cpus, batch_format="numpy",
                                # one batch queued per actor: else the first actors take the
                                # batches while the last wait (4 batches of a reading: one actor)
                                compute=data.ActorPoolStrategy(size=min(self.workers, len(units)),
                                                               max_tasks_in_flight_per_actor=1)))
        for row in dataset.iter_rows():
            if row["version"] != spec.reading.version:
                raise ConfigError(f"a worker reads {spec.reading.reader} with {row['version']}, this "
                                  f"process with {spec.reading.version}: install the same versions on "
                                  f"every node (the results are keyed by it)")
            unit = by_index[json.loads(row["unit"])["index"]]
            results = [ImageResult(sha, label, None if top is None else tuple(top))
                       for sha, label, top in json.loads(row["results"])]
            on_unit(unit, results, row["cpu"])

    def close(self) -> None:
        self.ray.shutdown()
        if self._ray_address is not None:
            os.environ["RAY_ADDRESS"] = self._ray_address
