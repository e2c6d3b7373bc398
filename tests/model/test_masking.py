"""Part-window tube masking invariants (docs/recipe.md)."""

import pytest
import torch

from maedfer.model import TubeWindowMasking, create_model


def test_reference_counts_and_tube_structure() -> None:
    masking = TubeWindowMasking((8, 10, 10), mask_ratio=0.9, window=(5, 10))
    mask = masking(16, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (16, 800) and mask.dtype == torch.bool
    assert (mask.sum(1) == 720).all()
    grid = mask.view(16, 8, 10, 10)
    # The same spatial pattern on every token-frame.
    assert (grid == grid[:, :1]).all()
    # Exactly 45 masked / 5 visible in each 5x10 window of every frame.
    windows = grid[:, 0].view(16, 2, 5, 10).sum((2, 3))
    assert (windows == 45).all()
    # Masks differ between videos.
    assert len({tuple(m.tolist()) for m in mask}) == 16


def test_ten_visible_tokens_per_region() -> None:
    model = create_model("mae_lgi_former_tiny", depth=1)
    mask = model.random_mask(4, generator=torch.Generator().manual_seed(1))
    order = model.visible_order(mask)
    assert order.shape == (4, 80)
    region = model.encoder.region_of_token[order]
    assert (region.view(4, 8, 10) == torch.arange(8).view(1, 8, 1)).all()


def test_seeded_masks_repeat() -> None:
    masking = TubeWindowMasking((8, 10, 10))
    a = masking(2, generator=torch.Generator().manual_seed(3))
    b = masking(2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_window_must_tile_and_leave_a_token() -> None:
    with pytest.raises(ValueError, match="tile"):
        TubeWindowMasking((8, 10, 10), window=(3, 10))
    with pytest.raises(ValueError, match="visible"):
        TubeWindowMasking((8, 10, 10), mask_ratio=1.0)


def test_unequal_regions_are_refused() -> None:
    model = create_model("mae_lgi_former_tiny", depth=1)
    mask = torch.ones(1, 800, dtype=torch.bool)
    mask[0, :80] = False  # all visible tokens in the first rows: unequal per region
    with pytest.raises(ValueError, match="same number of visible tokens"):
        model.visible_order(mask)
