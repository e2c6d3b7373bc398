"""LGI-Former through timm's registry after ``import maedfer`` (maedfer/_timm.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import maedfer  # noqa: F401 (registers with timm)
from maedfer.manifests import get_protocol


def test_timm_creates_and_lists_lgi_former() -> None:
    import timm

    assert timm.list_models("lgi_former*") == [
        "lgi_former_base",
        "lgi_former_small",
        "lgi_former_tiny",
    ]
    model = timm.create_model("lgi_former_base", num_classes=7)
    assert type(model).__name__ == "LGIFormer" and model.head.out_features == 7
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    tiny = timm.create_model("lgi_former_tiny.mafw", depth=1, img_size=64, region_size=(2, 2, 2))
    assert tiny.head.out_features == 11
    assert list(tiny.pretrained_cfg["label_names"]) == get_protocol("mafw").classes
    with torch.no_grad():
        assert tiny(torch.zeros(1, 3, 16, 64, 64)).shape == (1, 11)
    with pytest.raises(Exception, match="downloads no weights"):
        timm.create_model("lgi_former_base", pretrained=True)


@pytest.mark.parametrize("order", ["import maedfer, timm", "import timm, maedfer"])
def test_registration_does_not_depend_on_import_order(order: str) -> None:
    code = f"{order}; print(timm.list_models('lgi_former*'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "lgi_former_base" in done.stdout
