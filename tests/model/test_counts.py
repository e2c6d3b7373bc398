"""Exact sizes of the full models against the official code (docs/design.md, reference/)."""

import pytest

from maedfer.model import create_model
from maedfer.model.flops import count_gmacs, count_params


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("lgi_former_base", {"num_classes": 7}, 84_878_343),
        ("lgi_former_base", {"num_classes": 0}, 84_874_752),  # encoder + fc_norm, no head
        ("mae_lgi_former_base", {}, 92_760_192),
        ("vit_base", {"num_classes": 7}, 86_232_583),
    ],
)
def test_parameter_counts(name: str, overrides: dict, expected: int) -> None:
    assert count_params(create_model(name, **overrides)) == expected


def test_encoder_parameter_count() -> None:
    model = create_model("lgi_former_base", num_classes=7)
    assert count_params(model.encoder) + count_params(model.fc_norm) == 84_874_752


# Official measurements at 1x3x16x160x160 (docs/recipe.md); 0.5% is the tolerance.
@pytest.mark.parametrize(("name", "gmacs"), [("lgi_former_base", 49.65), ("vit_base", 80.69)])
def test_gmacs_per_clip(name: str, gmacs: float) -> None:
    measured = count_gmacs(create_model(name, num_classes=7))
    assert measured == pytest.approx(gmacs, rel=0.005)


def test_skipping_the_unused_tail_saves_macs() -> None:
    full = count_gmacs(create_model("lgi_former_base"))
    skipped = count_gmacs(create_model("lgi_former_base", skip_unused_tail=True))
    assert 0.9 * full < skipped < full
