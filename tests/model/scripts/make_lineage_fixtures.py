"""Make ``tests/model/fixtures/lineage/`` from the authors' code of the lineage (run once).

The authors' repositories are not dependencies: point each option at a checkout of one,
and the script imports the model modules from there (nothing of theirs is copied):

    python tests/model/scripts/make_lineage_fixtures.py \
        --videomae /path/to/VideoMAE --marlin /path/to/MARLIN --svfap /path/to/SVFAP \
        --hicmae /path/to/HiCMAE --s4d /path/to/S4D

(VideoMAE: MCG-NJU/VideoMAE; MARLIN: ControlNet/MARLIN; SVFAP: sunlicai/SVFAP; HiCMAE:
sunlicai/HiCMAE; S4D: MSA-LMC/S4D.) A family whose option is left out is not made.

For each family the script writes

- ``<family>.pt``: tiny models of the authors' classes (width 32, 2-5 blocks, 32-pixel frames)
  filled with seeded random weights, their state dicts in the released key layouts, seeded
  inputs and the authors' outputs on them (logits and clip features; S4D's with the torch seed
  its noisy router drew from; HiCMAE's the video branch of its feature fusion, read at the
  input of its ``fc_norm``);
- ``<family>_layouts.json``: the key names and shapes of the full-size released layouts,
  built on the ``meta`` device (nothing allocated), with the parameter counts;

each stamped with the authors' commit (``git rev-parse HEAD`` of the checkout).
``tests/model/test_lineage_fixtures.py`` loads the tiny weights into maedfer's models and
compares at 1e-4 relative; ``test_lineage_layouts.py`` checks the full-size layouts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "lineage"
Norm = partial(nn.LayerNorm, eps=1e-6)
DIM, HEADS = 32, 2


def randomize(model: nn.Module, seed: int) -> None:
    """Seeded weights far from the init (norm weights around 1), frozen tables included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.add_(noise * (0.1 if p.dim() > 1 else 0.2)) if "pos_embedding" in name else p.copy_(
                noise * (0.1 if p.dim() > 1 else 0.2) + (1.0 if is_norm_weight else 0.0)
            )


def video(seed: int, frames: int, size: int = 32, batch: int = 2) -> torch.Tensor:
    """A clip normalised as maedfer's loaders give it (about zero mean, unit spread)."""
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def layout(model: nn.Module) -> dict:
    return {
        "keys": {k: list(v.shape) for k, v in model.state_dict().items()},
        "params": sum(p.numel() for p in model.parameters()),
    }


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter a module registers moves to the ``meta`` device at once (as
    ``accelerate.init_empty_weights``): a full-size model's layout without its memory."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def on_meta(build: Callable[[], nn.Module]) -> dict:
    with parameters_on_meta():
        return layout(build())


def commit(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def import_from(path: Path, *names: str) -> list[types.ModuleType]:
    sys.path.insert(0, str(path))
    try:
        return [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(str(path))


def forget(*names: str) -> None:
    """The families reuse module names (``modeling_finetune``): drop them between families."""
    for name in names:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------- one function per family


def videomae(repo: Path) -> tuple[dict, dict]:
    finetune, pretrain = import_from(repo, "modeling_finetune", "modeling_pretrain")
    fixture: dict = {
        "config": {
            "embed_dim": DIM,
            "depth": 2,
            "num_heads": HEADS,
            "num_frames": 4,
            "num_classes": 5,
        },
        "sizes": {},
    }
    for size in (32, 48):  # two token grids: 2x2x2 and 2x3x3
        model = finetune.VisionTransformer(
            img_size=size,
            patch_size=16,
            embed_dim=DIM,
            depth=2,
            num_heads=HEADS,
            mlp_ratio=4,
            qkv_bias=True,
            norm_layer=Norm,
            num_classes=5,
            all_frames=4,
            tubelet_size=2,
            use_mean_pooling=True,
            init_scale=0.001,
        ).eval()
        randomize(model, seed=10 + size)
        clip = video(size, 4, size)
        with torch.no_grad():
            fixture["sizes"][size] = {
                "state": model.state_dict(),
                "video_seed": size,
                "logits": model(clip),
                "features": model.forward_features(clip),
            }
    pre = pretrain.PretrainVisionTransformer(
        img_size=32,
        patch_size=16,
        encoder_embed_dim=DIM,
        encoder_depth=2,
        encoder_num_heads=HEADS,
        encoder_num_classes=0,
        decoder_num_classes=1536,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=Norm,
        tubelet_size=2,
    ).eval()
    randomize(pre, seed=20)
    clip = video(3, 16)
    visible = torch.zeros(2, pre.encoder.patch_embed.num_patches, dtype=torch.bool)
    with torch.no_grad():  # every token visible: the encoder's normalised tokens
        tokens = pre.encoder.forward_features(clip, visible)
    fixture["pretrain"] = {
        "state": pre.state_dict(),
        "video_seed": 3,
        "frames": 16,
        "encoder_tokens": tokens,
    }
    layouts = {
        "finetune": on_meta(lambda: finetune.vit_base_patch16_224(num_classes=400)),
        "pretrain": on_meta(lambda: pretrain.pretrain_videomae_base_patch16_224(decoder_depth=4)),
    }
    forget("modeling_finetune", "modeling_pretrain")
    return fixture, layouts


def _marlin_package(repo: Path) -> types.ModuleType:
    """``marlin_pytorch.model`` without its ``__init__`` (which imports the video reader, ffmpeg
    and the face detector): its encoder and decoder modules only."""
    package = types.ModuleType("marlin_model")
    package.__path__ = [str(repo / "src" / "marlin_pytorch" / "model")]
    sys.modules["marlin_model"] = package
    return package


def marlin(repo: Path) -> tuple[dict, dict]:
    _marlin_package(repo)
    encoder_mod = importlib.import_module("marlin_model.encoder")
    decoder_mod = importlib.import_module("marlin_model.decoder")

    def full(
        size: int, dim: int, depth: int, heads: int, dec: tuple[int, int, int], frames: int = 16
    ) -> nn.Module:
        """``Marlin(as_feature_extractor=False)``'s three parts, under its attribute names."""
        common = dict(
            img_size=size,
            patch_size=16,
            mlp_ratio=4.0,
            qkv_bias=True,
            qk_scale=None,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            norm_layer="LayerNorm",
            init_values=0.0,
            tubelet_size=2,
        )
        model = nn.Module()
        model.encoder = encoder_mod.MarlinEncoder(
            n_frames=frames, embed_dim=dim, depth=depth, num_heads=heads, **common
        )
        model.decoder = decoder_mod.MarlinDecoder(
            n_frames=frames, embed_dim=dec[0], depth=dec[1], num_heads=dec[2], **common
        )
        model.enc_dec_proj = nn.Linear(dim, dec[0], bias=False)
        return model

    model = full(32, DIM, 2, HEADS, (32, 1, 2), frames=4).eval()
    randomize(model, seed=30)
    clip01 = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # MARLIN's clip feature: mean over tokens, then the encoder's norm
        features = model.encoder.extract_features(clip01, seq_mean_pool=True)
        tokens = model.encoder.extract_features(clip01, seq_mean_pool=False)
    fixture = {
        "config": {
            "embed_dim": DIM,
            "depth": 2,
            "num_heads": HEADS,
            "num_frames": 4,
            "img_size": 32,
        },
        "full_state": model.state_dict(),
        "encoder_state": {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")},
        "video01_seed": 4,
        "features": features,
        "normed_tokens": tokens,
    }
    layouts = {}
    for name, dims in {
        "small": (384, 12, 6, (192, 4, 3)),
        "base": (768, 12, 12, (384, 4, 6)),
        "large": (1024, 24, 16, (512, 12, 8)),
    }.items():
        # built for real: MARLIN assigns its position table's data, which the meta device
        # cannot hold (a few seconds and 1.5 GB for the large one)
        model = full(224, *dims)
        layouts[f"{name}_full"] = layout(model)
        layouts[f"{name}_encoder"] = layout(model.encoder)
        layouts[f"{name}_encoder"]["keys"] = {
            f"encoder.{k}": v for k, v in layouts[f"{name}_encoder"]["keys"].items()
        }
        del model
    forget(
        "marlin_model",
        "marlin_model.encoder",
        "marlin_model.decoder",
        "marlin_model.modules",
        "marlin_model.positional_embedding",
    )
    return fixture, layouts


def svfap(repo: Path) -> tuple[dict, dict]:
    finetune, pretrain = import_from(repo, "modeling_finetune", "modeling_pretrain")
    tpsbt = dict(stage_depths=(2, 2, 1), num_bottleneck_tokens=(3,), temporal_kernel_size=2)
    model = finetune.TPSBT(
        img_size=32,
        patch_size=16,
        embed_dim=DIM,
        num_heads=HEADS,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=Norm,
        num_classes=5,
        all_frames=16,
        tubelet_size=2,
        use_mean_pooling=True,
        init_scale=0.001,
        **tpsbt,
    ).eval()
    randomize(model, seed=40)
    clip = video(5, 16)
    with torch.no_grad():
        logits, features = model(clip, save_feature=True)
    pre = pretrain.PretrainVisionTransformer(
        img_size=32,
        patch_size=16,
        encoder_embed_dim=DIM,
        encoder_num_heads=HEADS,
        encoder_num_classes=0,
        decoder_num_classes=1536,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=Norm,
        **tpsbt,
    )
    randomize(pre, seed=41)
    fixture = {
        "config": {
            "embed_dim": DIM,
            "num_heads": HEADS,
            "num_frames": 16,
            "img_size": 32,
            "num_classes": 5,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in tpsbt.items()},
        },
        "state": model.state_dict(),
        "video_seed": 5,
        "logits": logits,
        "features": features,
        "pretrain_state": pre.state_dict(),
    }
    released = dict(stage_depths=(12, 6, 3), num_bottleneck_tokens=(8,), temporal_kernel_size=2)
    layouts = {
        "finetune": on_meta(lambda: finetune.svfap_base_patch16_160(num_classes=7, **released)),
        "pretrain": on_meta(
            lambda: pretrain.pretrain_svfap_base_patch16_160(decoder_depth=4, **released)
        ),
    }
    forget("modeling_finetune", "modeling_pretrain")
    return fixture, layouts


def hicmae(repo: Path) -> tuple[dict, dict]:
    finetune, pretrain = import_from(repo, "modeling_finetune_av", "modeling_pretrain_av")
    model = finetune.AudioVisionTransformer(
        img_size=32,
        patch_size=16,
        embed_dim=DIM,
        depth=3,
        num_heads=HEADS,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=Norm,
        num_classes=5,
        all_frames=4,
        img_size_audio=(64, 32),
        patch_size_audio=16,
        embed_dim_audio=DIM,
        depth_audio=2,
        num_heads_audio=HEADS,
        fusion_depth=1,
        fusion_num_heads=HEADS,
    ).eval()
    randomize(model, seed=50)
    clip = video(6, 4)
    audio = torch.randn(2, 1, 64, 32, generator=torch.Generator().manual_seed(7))
    fused: list[torch.Tensor] = []  # what fc_norm reads: [video, audio, fusion video, fusion audio]
    model.fc_norm.register_forward_pre_hook(lambda _, inputs: fused.append(inputs[0]))
    with torch.no_grad():
        model(clip, audio)
    pre = pretrain.PretrainAudioVisionTransformer(
        img_size=32,
        patch_size=16,
        encoder_embed_dim=DIM,
        encoder_depth=3,
        encoder_num_heads=HEADS,
        decoder_num_classes=1536,
        decoder_embed_dim=32,
        decoder_depth=2,
        decoder_num_heads=2,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=Norm,
        img_size_audio=(64, 32),
        encoder_embed_dim_audio=DIM,
        encoder_depth_audio=3,
        encoder_num_heads_audio=HEADS,
        decoder_embed_dim_audio=32,
        decoder_depth_audio=2,
        decoder_num_heads_audio=2,
        encoder_fusion_depth=1,
        encoder_fusion_num_heads=HEADS,
        return_intermediate_features=(1,),
    )
    randomize(pre, seed=51)
    fixture = {
        "config": {
            "embed_dim": DIM,
            "depth": 3,
            "num_heads": HEADS,
            "num_frames": 4,
            "img_size": 32,
        },
        "state": model.state_dict(),
        "video_seed": 6,
        "video_feature": fused[0][:, :DIM].clone(),
        "pretrain_state": pre.state_dict(),
    }
    layouts = {
        "finetune_av": on_meta(
            lambda: finetune.avit_dim512_patch16_160_a256(
                num_classes=6, depth=10, depth_audio=10, fusion_depth=2
            )
        ),
        "pretrain_av": on_meta(
            lambda: pretrain.pretrain_hicmae_dim512_patch16_160_a256(
                encoder_depth=10,
                decoder_depth=4,
                encoder_depth_audio=10,
                decoder_depth_audio=4,
                encoder_fusion_depth=2,
                return_intermediate_features=(3, 6, 9),
            )
        ),
    }
    forget("modeling_finetune_av", "modeling_pretrain_av")
    return fixture, layouts


def s4d(repo: Path) -> tuple[dict, dict]:
    (vit,) = import_from(repo / "finetune" / "s4d", "videomae")
    moe = {
        "type": "moe_adapters",
        "layers": [1, 2],
        "num_experts": 4,
        "top_k": 2,
        "capacity_factor": 1.0,
    }
    model = vit.VisionTransformerMoE(
        img_size=32,
        patch_size=16,
        embed_dim=DIM,
        depth=3,
        num_heads=HEADS,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=Norm,
        all_frames=4,
        tubelet_size=2,
        use_mean_pooling=True,
        multi_head=[7, 5],
        moe=moe,
    ).eval()
    randomize(model, seed=60)
    clip = video(8, 4, batch=3)  # 3 clips of 8 tokens: each expert takes at most 12 tokens
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    outputs = {}
    with torch.no_grad():
        for seed in (100, 101):  # the router draws its noise from the global generator
            torch.manual_seed(seed)
            outputs[seed] = model(clip)
        torch.manual_seed(102)
        image_logits = model(images)
    fixture = {
        "config": {
            "embed_dim": DIM,
            "depth": 3,
            "num_heads": HEADS,
            "num_frames": 4,
            "img_size": 32,
            "num_classes": 5,
            "num_image_classes": 7,
            "moe_start": 1,
            "num_experts": 4,
            "top_k": 2,
        },
        "state": model.state_dict(),
        "video_seed": 8,
        "batch": 3,
        "logits_by_seed": outputs,
        "image_seed": 9,
        "image_logits_seed": 102,
        "image_logits": image_logits,
    }
    released = {
        "type": "moe_adapters",
        "layers": list(range(6, 12)),
        "num_experts": 8,
        "top_k": 2,
        "capacity_factor": 1.0,
    }
    layouts = {
        "finetune": on_meta(
            lambda: vit.vitmoe_base_patch16_160(num_classes=7, multi_head=[7, 7], moe=released)
        )
    }
    forget("videomae")
    return fixture, layouts


FAMILIES = {"videomae": videomae, "marlin": marlin, "svfap": svfap, "hicmae": hicmae, "s4d": s4d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in FAMILIES:
        parser.add_argument(f"--{name}", type=Path, help=f"checkout of {name}'s repository")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in FAMILIES.items():
        repo = getattr(args, name)
        if repo is None:
            continue
        torch.manual_seed(0)
        fixture, layouts = make(repo.resolve())
        stamp = {"repository": repo.name, "commit": commit(repo)}
        torch.save({**fixture, "source": stamp}, args.out / f"{name}.pt")
        text = json.dumps({"source": stamp, "layouts": layouts}, indent=1)
        (args.out / f"{name}_layouts.json").write_text(text + "\n", encoding="utf-8")
        print(f"{name}: {stamp['commit'][:12]} -> {args.out / (name + '.pt')}")


if __name__ == "__main__":
    main()
