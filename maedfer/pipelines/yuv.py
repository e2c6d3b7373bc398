"""Decoded 4:2:0 planes → RGB on the batch's device: the colour conversion of the hybrid backend.

The same arithmetic as :func:`maedfer.pipelines.pyav.frames_to_rgb` (which the PyAV backend
runs on the CPU), written over a batch of clips in torch: studio-range luma ``(Y - 16)·255/219``
(full range as is), chroma centred on 0 and upsampled 2× bilinearly at half-pixel centres with
the edge repeated (weights 1/4 and 3/4: exact on whole numbers, whatever the order of the sums),
scaled by 255/224 in studio range, then the YCbCr matrix in float32 with the constants rounded to
float32 as numpy rounds them, rounded half to even and clipped to 0..255. Hence the same values
as the CPU conversion (tests/pipelines/test_hybrid.py).

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _f32(value: float) -> float:
    """``value`` rounded to float32 (the constant numpy uses with a float32 array)."""
    return float(np.float32(value))


def _upsample2(chroma: torch.Tensor) -> torch.Tensor:
    """2× bilinear upsampling of the last two axes (half-pixel centres, edges repeated)."""
    for axis in (-2, -1):
        n = chroma.shape[axis]
        edge = torch.cat(
            [chroma.narrow(axis, 0, 1), chroma, chroma.narrow(axis, n - 1, 1)], dim=axis
        )
        before, here, after = (edge.narrow(axis, k, n) for k in (0, 1, 2))
        even = before * 0.25 + here * 0.75
        odd = here * 0.75 + after * 0.25
        chroma = torch.stack([even, odd], dim=axis).flatten(
            axis - 1 if axis == -1 else -3, axis if axis == -1 else -2
        )
    return chroma


def planes_to_rgb(
    y: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    oy: int,
    ox: int,
    full_range: bool,
    kr: float,
    kb: float,
) -> torch.Tensor:
    """Luma ``(G, T, h, w)`` and chroma ``(G, T, ch, cw)`` uint8 (the chroma rows and columns
    around the luma's, the luma starting at ``(oy, ox)`` of the upsampled chroma) → float32
    ``(G, 3, T, h, w)``, whole numbers 0..255."""
    luma = y.float()
    if not full_range:
        luma = (luma - 16) * _f32(255 / 219)
    chroma = torch.stack([u, v], dim=1).float() - 128  # (G, 2, T, ch, cw)
    h, w = luma.shape[-2:]
    chroma = _upsample2(chroma)[..., oy : oy + h, ox : ox + w]
    if not full_range:
        chroma = chroma * _f32(255 / 224)
    cb, cr = chroma[:, 0], chroma[:, 1]
    kg = 1 - kr - kb
    rgb = torch.empty((luma.shape[0], 3, *luma.shape[1:]), dtype=torch.float32, device=luma.device)
    torch.add(luma, cr * _f32(2 * (1 - kr)), out=rgb[:, 0])
    torch.sub(
        luma, cb * _f32(2 * kb * (1 - kb) / kg) + cr * _f32(2 * kr * (1 - kr) / kg), out=rgb[:, 1]
    )
    torch.add(luma, cb * _f32(2 * (1 - kb)), out=rgb[:, 2])
    return rgb.round_().clamp_(0, 255)


def resize_rounded(clips: torch.Tensor, size: int) -> torch.Tensor:
    """Clips ``(G, 3, T, h, w)`` resized to ``size``×``size`` (bilinear, half-pixel centres, no
    antialiasing), rounded and clipped as DALI's uint8 resize output (PyAV's
    ``_crop_resize``)."""
    g, c, t, h, w = clips.shape
    if (h, w) == (size, size):
        return clips
    out = F.interpolate(
        clips.reshape(g, c * t, h, w), size=(size, size), mode="bilinear", align_corners=False
    )
    return out.view(g, c, t, size, size).round_().clamp_(0, 255)
