"""``maedfer profile train`` and the reference-style path of ``bench/train_speed.py``."""

import json

import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.model import create_model
from maedfer.model import layers as model_layers
from maedfer.recipes import profile
from tests.recipes.clipdata import TINY_CLASSIFIER, TINY_MAE, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def test_manual_attention_is_what_the_reference_path_runs() -> None:
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(profile.manual_attention(q, k, v), expected)
    model = create_model("mae_lgi_former_tiny", **TINY_MAE).eval()
    video = torch.randn(2, 3, 8, 32, 32)
    mask = model.random_mask(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(video, mask)
        with profile.reference_attention():
            assert model_layers.F.scaled_dot_product_attention is profile.manual_attention
            reference = model(video, mask)
    assert model_layers.F is torch.nn.functional  # restored
    torch.testing.assert_close(reference, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, overrides", [("lgi_former_tiny", TINY_CLASSIFIER), ("mae_lgi_former_tiny", TINY_MAE)]
)
def test_profile_train_gives_one_json_object(name, overrides) -> None:
    result = profile.run(name=name, batch=2, batches=2, device="cpu", overrides=overrides)
    printed = json.loads(json.dumps(result))
    assert "clips/s" in profile.format_table(result)
    assert printed["stage"] == "train" and printed["device"] == "cpu"
    assert printed["clips_per_s"] > 0 and printed["precision"] == "fp32"
    assert printed["kind"] == ("pretrain" if name.startswith("mae_") else "finetune")


def test_profile_train_cli_refuses_odd_finetune_batches() -> None:
    result = CliRunner().invoke(app, ["profile", "train", "--batch", "3", "--device", "cpu"])
    assert result.exit_code == 1 and "must be even" in result.output
