"""AdamW parameter groups: no-decay rules, layer-wise lr decay, lr scaling (docs/recipe.md)."""

import pytest
import torch

from maedfer.errors import MaedferError
from maedfer.model import create_model
from maedfer.training.optim import create_optimizer, layer_scales, param_groups, scaled_lr
from tests.recipes.clipdata import TINY_CLASSIFIER, TINY_MAE, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def _groups_by_name(model, **kw) -> dict[str, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in param_groups(model, **kw):
        for p in group["params"]:
            out[names[id(p)]] = group
    return out


def test_lr_scales_with_total_batch() -> None:
    # docs/recipe.md: blr 1e-3 at 3 GPUs x 32 = 96 clips -> 3.75e-4
    assert scaled_lr(1e-3, 96) == pytest.approx(3.75e-4)
    assert scaled_lr(3e-4, 160) == pytest.approx(1.875e-4)  # the released pre-training run
    with pytest.raises(MaedferError):
        scaled_lr(1e-3, 0)


def test_layer_scales_follow_the_reference_exponent() -> None:
    scales = layer_scales(18, 0.75)  # 16 blocks: embedding, blocks, rest
    assert scales[0] == pytest.approx(0.75**17) and scales[1] == pytest.approx(0.75**16)
    assert scales[16] == pytest.approx(0.75) and scales[17] == 1.0
    assert layer_scales(4, None) == [1.0] * 4


def test_classifier_groups_decay_rules_and_layers() -> None:
    model = create_model("lgi_former_tiny", **TINY_CLASSIFIER)  # depth 2: 4 layer ids
    groups = _groups_by_name(model, weight_decay=0.05, layer_decay=0.75)
    assert set(groups) == {n for n, _ in model.named_parameters()}  # each exactly once
    for name, param in model.named_parameters():
        exempt = param.ndim <= 1 or name.endswith(".bias") or name == "encoder.region_tokens"
        assert groups[name]["weight_decay"] == (0.0 if exempt else 0.05), name
    scale = {name: g["lr_scale"] for name, g in groups.items()}
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.75**3)
    assert scale["encoder.blocks.0.mlp.fc1.weight"] == pytest.approx(0.75**2)
    assert scale["encoder.blocks.1.intra_attn.q_bias"] == pytest.approx(0.75)
    # the region tokens take the top scale, like the head (docs/recipe.md)
    assert scale["encoder.region_tokens"] == scale["head.weight"] == scale["fc_norm.bias"] == 1.0


def test_pretraining_groups_decay_region_tokens_but_not_mask_token() -> None:
    # docs/recipe.md: the reference's exact-name check exempts mask_token only
    groups = _groups_by_name(create_model("mae_lgi_former_tiny", **TINY_MAE), weight_decay=0.05)
    assert groups["mask_token"]["weight_decay"] == 0.0
    assert groups["encoder.region_tokens"]["weight_decay"] == 0.05
    assert groups["decoder.head.bias"]["weight_decay"] == 0.0
    assert {g["lr_scale"] for g in groups.values()} == {1.0}


def test_frozen_parameters_are_left_out_and_initial_lrs_scaled() -> None:
    model = create_model("lgi_former_tiny", **TINY_CLASSIFIER)
    model.encoder.blocks[1].cross_attn.requires_grad_(False)
    opt = create_optimizer(model, lr=1e-3, layer_decay=0.5, betas=(0.9, 0.95))
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in held for p in model.encoder.blocks[1].cross_attn.parameters())
    assert len(held) == sum(p.requires_grad for p in model.parameters())
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
        assert group["betas"] == (0.9, 0.95)
    assert isinstance(opt, torch.optim.AdamW)
