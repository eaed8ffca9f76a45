import pytest
import torch

import models

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
