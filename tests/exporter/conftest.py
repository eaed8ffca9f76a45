import pytest

from exporter.export import ExportConfig, export_to_folder, image_range

TINY = {"num_classes": 10, "model_width": 0.125}


def tiny_config(variant: str, **kw) -> ExportConfig:
    if variant == "sa":  # keep sa's attention maps small on 2 cores
        kw.setdefault("height", image_range("height", 32, 64, 96))
        kw.setdefault("width", image_range("width", 32, 96, 96))
    return ExportConfig(variant, **{**TINY, **kw})


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(variant) -> manifest path of a tiny export (each variant exported once)."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            out = tmp_path_factory.mktemp(f"export-{variant}") / variant
            cache[variant] = export_to_folder(tiny_config(variant), out, log=lambda *_: None)
        return cache[variant]

    return get
