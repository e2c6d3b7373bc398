"""Make ``tests/model/fixtures/official_tiny.pt`` from the official MAE-DFER code (run once).

The official repository (https://github.com/sunlicai/MAE-DFER) is not a dependency: point
``--official-repo`` at a checkout holding ``modeling_finetune.py``, ``modeling_pretrain.py`` and
``masking_generator.py``. The script builds tiny official models (width 64, 2 blocks, 4 frames,
160 px so the (2, 5, 10) region fits the 2x10x10 token grid), fills them with seeded random
weights, runs them on a seeded input and mask, and stores the weights in the official key layout
together with the outputs: logits of the three poolings, the pre-training output, the targets as
the official training engine builds them, and the official MSE loss. ``test_official_fixture.py``
loads those weights into our models and compares at 1e-4.

    python tests/model/scripts/make_official_fixture.py --official-repo /path/to/MAE-DFER
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_tiny.pt"
TINY = dict(img_size=160, patch_size=16, all_frames=4, tubelet_size=2, mlp_ratio=4, qkv_bias=True)
DIM, DEPTH, HEADS, BATCH = 64, 2, 2, 2


def randomize(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.copy_(noise * (0.1 if p.dim() > 1 else 0.2) + (1.0 if is_norm_weight else 0.0))


def official_targets(video: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int, int]):
    """The official engine's target: per-tubelet normalised, then frame differences."""
    t, h, w = grid
    mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN)[None, :, None, None, None]
    std = torch.as_tensor(IMAGENET_DEFAULT_STD)[None, :, None, None, None]
    raw = video * std + mean
    squeeze = rearrange(
        raw, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=2, p1=16, p2=16
    )
    norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (
        squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6
    )
    patches = rearrange(norm, "b n p c -> b n (p c)")
    frames = rearrange(
        patches,
        "b (t h w) (p0 p1 p2 c) -> b c (t p0) (h p1) (w p2)",
        t=t,
        h=h,
        w=w,
        p0=2,
        p1=16,
        p2=16,
    )
    diff = frames - frames[:, :, ::2].repeat_interleave(2, dim=2)
    diff[:, :, ::2] = frames[:, :, ::2]
    tokens = rearrange(
        diff, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)", p0=2, p1=16, p2=16
    )
    return tokens[mask].reshape(video.shape[0], -1, tokens.shape[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    sys.path.insert(0, str(args.official_repo))
    warnings.filterwarnings("ignore")
    import masking_generator
    import modeling_finetune
    import modeling_pretrain

    torch.manual_seed(0)
    np.random.seed(0)
    video = torch.randn(BATCH, 3, 4, 160, 160, generator=torch.Generator().manual_seed(1))
    norm = partial(nn.LayerNorm, eps=1e-6)
    lg = dict(attn_type="local_global", lg_region_size=(2, 5, 10))
    fixture: dict = {
        "video_seed": 1,
        "video_shape": list(video.shape),
        "config": {
            "embed_dim": DIM,
            "depth": DEPTH,
            "num_heads": HEADS,
            "num_frames": 4,
            "img_size": 160,
        },
    }
    for pooling in ("region", "org", "all"):
        model = modeling_finetune.VisionTransformer(
            num_classes=7,
            embed_dim=DIM,
            depth=DEPTH,
            num_heads=HEADS,
            norm_layer=norm,
            use_mean_pooling=True,
            init_scale=0.001,
            lg_classify_token_type=pooling,
            **lg,
            **TINY,
        ).eval()
        randomize(model, seed=10)
        with torch.no_grad():
            fixture[f"logits_{pooling}"] = model(video)
    # Pooling adds no parameters: the same seeded weights serve all three.
    fixture["finetune_state"] = model.state_dict()

    # The official pre-training encoder is fixed at 16 frames: its own input, batch 1.
    video16 = torch.randn(1, 3, 16, 160, 160, generator=torch.Generator().manual_seed(2))
    generator = masking_generator.TubeWindowMaskingGenerator((8, 10, 10), 0.9, (5, 10))
    mask = torch.from_numpy(generator()[None]).bool()
    pre = modeling_pretrain.PretrainVisionTransformer(
        img_size=160,
        patch_size=16,
        tubelet_size=2,
        mlp_ratio=4,
        qkv_bias=True,
        encoder_embed_dim=DIM,
        encoder_depth=DEPTH,
        encoder_num_heads=HEADS,
        encoder_num_classes=0,
        decoder_num_classes=1536,
        decoder_embed_dim=32,
        decoder_depth=2,
        decoder_num_heads=2,
        norm_layer=norm,
        lg_first_attn_type="self",
        lg_third_attn_type="cross",
        **lg,
    ).eval()
    randomize(pre, seed=20)
    with torch.no_grad():
        pred = pre(video16, mask)
    targets = official_targets(video16, mask, (8, 10, 10))
    # Every 11th masked token keeps the file small; the loss covers all of them.
    rows = torch.arange(0, pred.shape[1], 11)
    fixture.update(
        video16_seed=2,
        mask=mask,
        pretrain_state=pre.state_dict(),
        rows=rows,
        pretrain_pred_rows=pred[:, rows].clone(),
        targets_rows=targets[:, rows].clone(),
        loss=nn.MSELoss()(pred, targets).clone(),
        decoder={"decoder_embed_dim": 32, "decoder_depth": 2, "decoder_num_heads": 2},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
