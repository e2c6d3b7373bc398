"""Part-window tube masking of MAE-DFER pre-training (docs/reference.md).

Each frame of the token grid is tiled by windows (by default the regions' spatial extent). In
every window exactly ``int(mask_ratio * window_area)`` tokens are masked at random; the same
spatial pattern is repeated over all token-frames (tube masking). With the reference settings,
grid (8, 10, 10), window (5, 10), ratio 0.9: 45 of 50 masked per window, 720 masked / 80 visible
per video, 10 visible tokens in each of the 8 regions of size (2, 5, 10).
"""

from __future__ import annotations

import torch


class TubeWindowMasking:
    """Draws boolean masks ``(B, T'*H'*W')`` in raster order, True = masked.

    Args:
        token_grid: (T', H', W') tokens.
        mask_ratio: fraction of each window that is masked (truncated to whole tokens).
        window: (h, w) window size in tokens; must tile the frame.
    """

    def __init__(
        self,
        token_grid: tuple[int, int, int],
        *,
        mask_ratio: float = 0.9,
        window: tuple[int, int] = (5, 10),
    ) -> None:
        frames, height, width = token_grid
        win_h, win_w = window
        if height % win_h or width % win_w:
            raise ValueError(
                f"window {tuple(window)} must tile the token frame ({height}, {width})"
            )
        area = win_h * win_w
        self.num_masked_per_window = int(mask_ratio * area)
        if not 0 <= self.num_masked_per_window < area:
            raise ValueError(f"mask_ratio ({mask_ratio}) must leave a visible token per window")
        self.token_grid = (frames, height, width)
        self.num_windows = (height // win_h) * (width // win_w)
        self.window_area = area
        rows = torch.arange(height)[:, None]
        cols = torch.arange(width)[None, :]
        # For each spatial position (raster): its window and its index inside that window.
        self._window_of = ((rows // win_h) * (width // win_w) + cols // win_w).flatten()
        self._index_in_window = ((rows % win_h) * win_w + cols % win_w).flatten()

    @property
    def num_masked(self) -> int:
        return self.num_masked_per_window * self.num_windows * self.token_grid[0]

    def __call__(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        scores = torch.rand(batch_size, self.num_windows, self.window_area, generator=generator)
        # A random permutation rank per window position; the top ranks are the masked ones.
        rank = scores.argsort(-1).argsort(-1)
        masked = rank >= self.window_area - self.num_masked_per_window
        frame = masked[:, self._window_of, self._index_in_window]
        return frame.repeat(1, self.token_grid[0]).to(device)
