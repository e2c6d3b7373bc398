"""Loading state dicts in the official key layout (reference/*.json lists every key and shape)."""

import json
from pathlib import Path

import pytest
import torch

from maedfer.model import OfficialCheckpointError, create_model, load_official

REFERENCE = Path(__file__).parent / "fixtures" / "reference"


def _random_state(kind: str) -> dict[str, torch.Tensor]:
    spec = json.loads((REFERENCE / f"official_{kind}_state_dict.json").read_text())["keys"]
    gen = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=gen) for key, shape in spec.items()}


@pytest.fixture(scope="module")
def finetune_state() -> dict[str, torch.Tensor]:
    return _random_state("finetune")


@pytest.fixture(scope="module")
def pretrain_state() -> dict[str, torch.Tensor]:
    return _random_state("pretrain")


def test_finetune_layout_loads_every_tensor(finetune_state: dict) -> None:
    model = create_model("lgi_former_base", num_classes=7)
    report = load_official(model, {"model": finetune_state})
    assert len(report.loaded) == len(finetune_state) and not report.dropped
    assert torch.equal(model.head.weight, finetune_state["head.weight"])
    assert torch.equal(model.encoder.region_tokens, finetune_state["lg_region_tokens"])


def test_pretrain_layout_loads_into_the_mae_model(pretrain_state: dict) -> None:
    model = create_model("mae_lgi_former_base")
    report = load_official(model, pretrain_state)
    assert len(report.loaded) == len(pretrain_state)
    assert torch.equal(model.mask_token, pretrain_state["mask_token"])


def test_pretrain_layout_starts_a_classifier(pretrain_state: dict) -> None:
    model = create_model("lgi_former_base", num_classes=7)
    head_before = model.head.weight.clone()
    report = load_official(model, pretrain_state)
    assert "mask_token" in report.dropped and "encoder.norm.weight" in report.dropped
    assert any(k.startswith("decoder.") for k in report.dropped)
    assert {"fc_norm.weight", "head.weight"} <= set(report.fresh)
    assert torch.equal(model.head.weight, head_before)
    key = "encoder.blocks.3.first_attn.q_bias"
    assert torch.equal(model.encoder.blocks[3].intra_attn.q_bias, pretrain_state[key])


def test_missing_key_is_named(finetune_state: dict) -> None:
    state = dict(finetune_state)
    del state["blocks.5.second_attn.proj.weight"]
    with pytest.raises(OfficialCheckpointError, match=r"missing.*blocks\.5\.inter_attn\.proj"):
        load_official(create_model("lgi_former_base", num_classes=7), state)


def test_mis_shaped_key_is_named_with_both_shapes(finetune_state: dict) -> None:
    with pytest.raises(OfficialCheckpointError, match=r"head\.weight \(checkpoint \[7, 512\]"):
        load_official(create_model("lgi_former_base", num_classes=6), finetune_state)


def test_unexpected_key_is_named(finetune_state: dict) -> None:
    state = {**finetune_state, "blocks.0.surprise": torch.zeros(1)}
    with pytest.raises(OfficialCheckpointError, match=r"unexpected.*blocks\.0\.surprise"):
        load_official(create_model("lgi_former_base", num_classes=7), state)
