"""The full-size released layouts of the lineage fit maedfer's models, key for key and shape for
shape, checked on the ``meta`` device (nothing allocated).

``fixtures/lineage/<family>_layouts.json`` list every key and shape of the authors' full-size
models (``scripts/make_lineage_fixtures.py``, built from their code at the commit it names).
"""

import json
from pathlib import Path

import pytest
import torch

from maedfer.model import create_model
from maedfer.model.flops import count_params
from maedfer.model.layout import OfficialCheckpointError, plan, shapes
from maedfer.model.official import identify, layout_for, official_classifier

FIXTURES = Path(__file__).parent / "fixtures" / "lineage"


def released(family: str, name: str) -> dict:
    return json.loads((FIXTURES / f"{family}_layouts.json").read_text())["layouts"][name]


def meta_state(keys: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def check(family: str, layout: str, model_name: str, **overrides):
    """Plan the load of a released layout into ``model_name`` built on meta; the report."""
    source = released(family, layout)["keys"]
    with torch.device("meta"):
        model = create_model(model_name, **overrides)
    chosen = layout_for(model, meta_state(source))
    _, report = plan(
        chosen, {k: tuple(v) for k, v in source.items()}, shapes(model.state_dict()), model_name
    )
    return model, report


@pytest.mark.parametrize(
    ("family", "layout", "model_name", "overrides", "fresh"),
    [
        ("videomae", "finetune", "videomae_base_224", {"num_classes": 400}, []),
        ("videomae", "finetune", "videomae_base", {"num_classes": 400}, []),  # no stored table
        ("videomae", "pretrain", "videomae_base", {}, ["fc_norm.", "head."]),
        ("marlin", "small_encoder", "marlin_small", {}, ["head."]),
        ("marlin", "base_encoder", "marlin_base", {}, ["head."]),
        ("marlin", "base_full", "marlin_base", {}, ["head."]),
        ("marlin", "large_encoder", "marlin_large", {}, ["head."]),
        ("marlin", "large_full", "marlin_large", {}, ["head."]),
        ("svfap", "finetune", "svfap_base", {}, []),
        (
            "svfap",
            "pretrain",
            "svfap_base",
            {"embed_dim": 768, "num_heads": 12},
            ["fc_norm.", "head."],
        ),
        ("hicmae", "finetune_av", "hicmae_base", {}, ["fc_norm.", "head."]),
        ("hicmae", "pretrain_av", "hicmae_base", {}, ["fc_norm.", "head.", "video_layer"]),
        ("s4d", "finetune", "s4d_base", {"num_image_classes": 7}, []),
    ],
)
def test_full_size_layout_fits(family, layout, model_name, overrides, fresh) -> None:
    _, report = check(family, layout, model_name, **overrides)
    assert all(key.startswith(tuple(fresh)) for key in report.fresh) and (
        bool(report.fresh) == bool(fresh)
    )
    assert report.loaded


def test_svfap_released_pretraining_width_differs_from_its_fine_tuning_model() -> None:
    """The released code pre-trains 768 wide and fine-tunes 512 wide (svfap.py docstring): the
    mismatch is one line naming both shapes."""
    with pytest.raises(
        OfficialCheckpointError,
        match=r"shape mismatch .*patch_embed\.proj\.weight \(checkpoint \[768",
    ):
        check("svfap", "pretrain", "svfap_base")


@pytest.mark.parametrize(
    ("family", "layout", "model_name", "num_classes"),
    [
        ("videomae", "finetune", "videomae_base", 400),
        ("svfap", "finetune", "svfap_base", 7),
        ("s4d", "finetune", "s4d_base", 7),
    ],
)
def test_fine_tuned_layouts_are_recognised_with_their_config(
    family, layout, model_name, num_classes
) -> None:
    state = meta_state(released(family, layout)["keys"])
    name, config = official_classifier(state)
    assert name == model_name and config["num_classes"] == num_classes
    with torch.device("meta"):
        model = create_model(name, **config)
    _, report = plan(layout_for(model, state), shapes(state), shapes(model.state_dict()), name)
    assert not report.fresh and not report.dropped
    assert count_params(model) == released(family, layout)["params"]


@pytest.mark.parametrize(
    ("family", "layout", "says"),
    [
        ("marlin", "base_encoder", "not a classifier.*model.name=marlin_base"),
        ("videomae", "pretrain", "not a classifier.*model.name=videomae_base"),
        ("hicmae", "finetune_av", "audio features.*model.name=hicmae_base"),
    ],
)
def test_what_is_no_classifier_says_how_to_fine_tune_it(family, layout, says) -> None:
    with pytest.raises(OfficialCheckpointError, match=says):
        official_classifier(meta_state(released(family, layout)["keys"]))


@pytest.mark.parametrize(
    ("family", "layout", "size"),
    [
        ("marlin", "base_encoder", "base"),
        ("marlin", "large_encoder", "large"),
    ],
)
def test_marlin_sizes_equal_the_released_encoders(family, layout, size) -> None:
    """MARLIN's table is a frozen parameter there, a buffer here: the counts differ by it."""
    info = released(family, layout)
    with torch.device("meta"):
        model = create_model(f"marlin_{size}", num_classes=0)
    table = model.pos_embed.numel()
    fc_norm = count_params(model.fc_norm)  # MARLIN's encoder.norm, counted in both
    assert count_params(model) + table == info["params"] and fc_norm > 0


def test_every_released_layout_is_recognised() -> None:
    for family in ("videomae", "marlin", "svfap", "hicmae", "s4d"):
        for name, info in json.loads((FIXTURES / f"{family}_layouts.json").read_text())[
            "layouts"
        ].items():
            found = identify(meta_state(info["keys"]))
            assert found is not None and family in found.name.replace("-", ""), (family, name)
