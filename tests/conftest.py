import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from attnvgg_export import models
from attnvgg_export.graphs.export import ExportConfig, batch_range, export_to_folder, image_range

TINY_WIDTH = 0.125  # channels 8..64, hidden 512: fast on 2 cores, same graph structure


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def tiny():
    """tiny(variant, num_classes=10) -> an eval-mode reduced-width model."""

    def build(variant: str, num_classes: int = 10, **kw):
        return models.create_model(variant, num_classes=num_classes, width=TINY_WIDTH, **kw)

    return build


TINY = {"num_classes": 10, "model_width": 0.125}


def tiny_config(variant: str, **kw) -> ExportConfig:
    if variant == "sa":  # keep sa's attention maps small on 2 cores
        kw.setdefault("height", image_range("height", 32, 64, 96))
        kw.setdefault("width", image_range("width", 32, 96, 96))
    return ExportConfig(variant, **{**TINY, **kw})


def gate_range() -> dict:
    """The declared range of the builds the gate's tests share: the opt size of the default range
    and smaller corners (batch up to 8, sides up to 256), since the corners' pixels are most of a
    gate run's time and these tests are about what the gate does; the default range is exported
    in test_export and built at full size by CI's `make engine VARIANT=se`."""
    return {"batch": batch_range(1, 1, 8), "height": image_range("height", 32, 224, 256),
            "width": image_range("width", 32, 224, 256)}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(variant) -> manifest path of a tiny export (each variant exported once), over
    gate_range()."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            out = tmp_path_factory.mktemp(f"export-{variant}") / variant
            config = tiny_config(variant, **({} if variant == "sa" else gate_range()))
            cache[variant] = export_to_folder(config, out, log=lambda *_: None)
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def precision_build(exported, tmp_path_factory):
    """A tiny se build with every precision graph (random init, calibrated on noise)."""
    from attnvgg_export.graphs.precision import PrecisionConfig, build_precision_graphs

    root = tmp_path_factory.mktemp("precision") / "se"
    shutil.copytree(exported("se").parent, root)
    build_precision_graphs(root / "manifest.json", PrecisionConfig(
        calib_source="noise", calib_count=16, tuning_count=8, heldout_count=8), log=lambda *_: None)
    return root


@dataclass(frozen=True)
class DigitsBuild:
    manifest: Path
    fixture: object  # benchmarks.digits.TrainedFixture
    config: object  # attnvgg_export.graphs.precision.PrecisionConfig
    log: list


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory) -> DigitsBuild:
    """The trained se digits fixture (shipped: tests/assets/digits-se.safetensors, the same model on
    every CPU) with every precision graph, built once per session. Tests that change the build
    work on a copy (copy_build)."""
    from attnvgg_export.graphs.precision import PrecisionConfig, build_precision_graphs
    from benchmarks import digits
    from benchmarks.precision_table import fixture_manifest

    root = tmp_path_factory.mktemp("digits")
    manifest, fixture = fixture_manifest("se", root, digits.shipped_fixture())
    npz = digits.write_unseen_npz(root / "digits-unseen.npz")
    config = PrecisionConfig(calib_source=str(npz), **digits.UNSEEN_SPLIT)
    lines: list[str] = []
    build_precision_graphs(manifest, config, log=lines.append)
    return DigitsBuild(manifest, fixture, config, lines)


def copy_build(folder: Path, tmp_path: Path) -> Path:
    """A private copy of a session-scoped build folder, for tests that change it."""
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


@pytest.fixture(scope="session")
def engines_build(precision_build, tmp_path_factory):
    """precision_build after the engines stage (CPU backend): OpenVINO IR added."""
    from attnvgg_export.convert.engines import build_engines

    root = copy_build(precision_build, tmp_path_factory.mktemp("engines"))
    build_engines(root / "manifest.json", "ort", log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def gated_build(engines_build, tmp_path_factory):
    """engines_build after a whole gate run: verdicts and golden I/O for a box to re-check."""
    from attnvgg_export.verify.gate import run_parity

    root = copy_build(engines_build, tmp_path_factory.mktemp("gated"))
    assert run_parity(root / "manifest.json", log=lambda *_: None).passed
    return root
