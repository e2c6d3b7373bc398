"""The lineage's encoders equal their authors' code on stored outputs (1e-4 relative, fp32 CPU).

``fixtures/lineage/<family>.pt`` were made by ``scripts/make_lineage_fixtures.py`` from each
authors' model classes (the commit is stored in the file) with seeded random weights in their
released key layouts; here those weights go through :func:`maedfer.model.load_official` into
maedfer's models. 1e-4 of the output's largest magnitude leaves room for summation order (SDPA
against the authors' softmax(QK^T)V, measured ~1e-6); a wrong key, norm epsilon, token order or
pooling moves outputs by 1e-2 or more.
"""

from pathlib import Path

import pytest
import torch

from maedfer.constants import IMAGENET_MEAN, IMAGENET_STD
from maedfer.model import create_model, input_contract, load_official
from maedfer.model import s4d as s4d_module
from maedfer.model.layout import OfficialCheckpointError

FIXTURES = Path(__file__).parent / "fixtures" / "lineage"
TOL = 1e-4


def fixture(family: str) -> dict:
    return torch.load(FIXTURES / f"{family}.pt", weights_only=True)


def clip(seed: int, frames: int, size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    assert actual.shape == expected.shape
    worst = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert worst <= tol * scale, f"max difference {worst:.3g} > {tol:g} x {scale:.3g}"


def test_every_fixture_names_the_authors_commit() -> None:
    for family in ("videomae", "marlin", "svfap", "hicmae", "s4d"):
        source = fixture(family)["source"]
        assert len(source["commit"]) == 40 and source["repository"]


# ---------------------------------------------------------------- VideoMAE


@pytest.mark.parametrize("size", [32, 48])
def test_videomae_fine_tuned_logits_match(size: int) -> None:
    data = fixture("videomae")
    sample = data["sizes"][size]
    model = create_model("videomae_base", img_size=size, **data["config"]).eval()
    report = load_official(model, sample["state"])
    assert report.source_layout == "videomae-finetune" and not report.dropped + report.fresh
    with torch.no_grad():
        video = clip(sample["video_seed"], 4, size)
        assert_relative(model.forward_features(video), sample["features"])
        assert_relative(model(video), sample["logits"])


def test_videomae_pretrained_encoder_matches_and_starts_a_classifier() -> None:
    data, pre = fixture("videomae"), fixture("videomae")["pretrain"]
    model = create_model(
        "videomae_base", img_size=32, **{**data["config"], "num_frames": pre["frames"]}
    ).eval()
    report = load_official(model, pre["state"])
    assert {"mask_token", "encoder.norm.weight", "encoder_to_decoder.weight"} <= set(report.dropped)
    assert report.fresh == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    with torch.no_grad():  # their encoder ends with its norm; the classifier drops it
        tokens = model.forward_tokens(clip(pre["video_seed"], pre["frames"]))
        state = pre["state"]
        normed = torch.nn.functional.layer_norm(
            tokens,
            tokens.shape[-1:],
            state["encoder.norm.weight"],
            state["encoder.norm.bias"],
            eps=1e-6,
        )
    assert_relative(normed, pre["encoder_tokens"])


def test_vit_base_is_the_videomae_entry() -> None:
    model = create_model("vit_base", depth=1)
    assert model.model_name == "videomae_base" and input_contract("vit_base").img_size == 160
    assert input_contract("videomae_base_224").img_size == 224


# ---------------------------------------------------------------- MARLIN


@pytest.mark.parametrize("state_key", ["encoder_state", "full_state"])
def test_marlin_features_match_from_loader_normalised_clips(state_key: str) -> None:
    """The same [0, 1] pixels: MARLIN's own input, and maedfer's ImageNet-normalised one."""
    data = fixture("marlin")
    model = create_model("marlin_base", num_classes=0, **data["config"]).eval()
    report = load_official(model, data[state_key])
    assert "pos_embed" in report.loaded
    assert any(k.startswith("decoder.") for k in report.dropped) == (state_key == "full_state")
    x01 = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(data["video01_seed"]))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1, 1)
    video = ((x01.double() - mean) / std).float()
    with torch.no_grad():
        assert_relative(model.forward_features(video), data["features"])
    assert input_contract(model).mean == (0.0, 0.0, 0.0) and input_contract(model).stride == 2


def test_marlin_stored_position_table_is_used() -> None:
    data = fixture("marlin")
    model = create_model("marlin_base", num_classes=0, **data["config"])
    load_official(model, data["encoder_state"])
    assert torch.equal(model.pos_embed, data["encoder_state"]["encoder.pos_embedding.emb"])


# ---------------------------------------------------------------- SVFAP


def test_svfap_fine_tuned_logits_match() -> None:
    data = fixture("svfap")
    model = create_model("svfap_base", **data["config"]).eval()
    report = load_official(model, data["state"])
    assert len(report.loaded) == len(data["state"])
    with torch.no_grad():
        video = clip(data["video_seed"], 16)
        assert_relative(model.forward_features(video), data["features"])
        assert_relative(model(video), data["logits"])


def test_svfap_pretrained_encoder_starts_a_classifier() -> None:
    data = fixture("svfap")
    model = create_model("svfap_base", **data["config"])
    report = load_official(model, data["pretrain_state"])
    assert report.fresh == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    key = "blocks.3.cross_attn.kv.weight"
    assert torch.equal(model.state_dict()[key], data["pretrain_state"]["encoder." + key])


# ---------------------------------------------------------------- HiCMAE


def test_hicmae_visual_branch_matches_its_feature_fusion() -> None:
    data = fixture("hicmae")
    model = create_model("hicmae_base", num_classes=5, **data["config"]).eval()
    report = load_official(model, data["state"])
    assert any(k.startswith("encoder_audio.") for k in report.dropped)
    assert "audio_layer_weights" in report.dropped and "video_layer_weights" in report.loaded
    assert report.fresh == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    with torch.no_grad():
        assert_relative(model.pooled(clip(data["video_seed"], 4)), data["video_feature"])


def test_hicmae_pretrained_av_mae_gives_the_visual_encoder() -> None:
    data = fixture("hicmae")
    model = create_model("hicmae_base", num_classes=5, **data["config"])
    report = load_official(model, data["pretrain_state"])
    assert "video_layer_weights" in report.fresh
    assert any(k.startswith("decoder_audio.") for k in report.dropped)
    key = "blocks.2.attn.qkv.weight"
    assert torch.equal(model.state_dict()[key], data["pretrain_state"]["encoder." + key])


# ---------------------------------------------------------------- S4D


@pytest.fixture(scope="module")
def s4d() -> tuple[torch.nn.Module, dict]:
    data = fixture("s4d")
    model = create_model("s4d_base", **data["config"]).eval()
    report = load_official(model, data["state"])
    assert len(report.loaded) == len(data["state"]) and "image_head.weight" in report.loaded
    return model, data


def test_s4d_noisy_routing_matches_for_the_same_torch_seed(s4d) -> None:
    model, data = s4d
    video = clip(data["video_seed"], 4, batch=data["batch"])
    for seed, expected in data["logits_by_seed"].items():
        torch.manual_seed(seed)
        with torch.no_grad():
            assert_relative(model(video), expected)
    # the noise matters: the two seeds' outputs differ
    first, second = data["logits_by_seed"].values()
    assert (first - second).abs().max() > 1e-3


def test_s4d_image_head_matches(s4d) -> None:
    model, data = s4d
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(data["image_seed"]))
    torch.manual_seed(data["image_logits_seed"])
    with torch.no_grad():
        assert_relative(model(images), data["image_logits"])


def test_s4d_export_path_equals_the_routed_one(s4d, monkeypatch) -> None:
    """The dense path traced for export gives what per-expert dispatch gives, capacity and all."""
    model, data = s4d
    video = clip(data["video_seed"], 4, batch=data["batch"])
    torch.manual_seed(100)
    with torch.no_grad():
        routed = model(video)
    monkeypatch.setattr(s4d_module, "_exporting", lambda: True)
    torch.manual_seed(100)
    with torch.no_grad():
        dense = model(video)
    assert_relative(dense, routed, 1e-6)


def test_s4d_router_noise_can_stay_out_of_evaluation() -> None:
    data = fixture("s4d")
    model = create_model("s4d_base", router_noise="train", **data["config"]).eval()
    load_official(model, data["state"])
    video = clip(data["video_seed"], 4, batch=data["batch"])
    with torch.no_grad():
        assert torch.equal(model(video), model(video))


# ---------------------------------------------------------------- refusals


def test_a_layout_of_another_family_is_named() -> None:
    data = fixture("svfap")
    with pytest.raises(OfficialCheckpointError, match="SVFAP fine-tuned.*loads into svfap_"):
        load_official(create_model("videomae_base", depth=2), data["state"])
