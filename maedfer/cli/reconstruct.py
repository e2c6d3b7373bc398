"""``maedfer reconstruct``: what a pre-trained MAE reconstructs
(:mod:`maedfer.inference.reconstruct_run`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import (
    Device,
    failures,
    opt_device,
)


def reconstruct(
    inputs: Annotated[
        list[str], typer.Argument(help="Videos (files, folders, globs), or one manifest.parquet.")
    ],
    checkpoint: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A pretrain run's last.pt or final.pt, or "
            "an official MAE-DFER pre-trained .pth (not a classifier).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(file_okay=False, help="Folder for the pictures, the videos and losses.csv."),
    ],
    mask_ratio: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Share of tokens masked (default: the model's, 0.9)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the masks.")] = 0,
    hop: Annotated[
        int | None,
        typer.Option(min=1, help="Window hop in sampled frames (default: a whole window)."),
    ] = None,
    fold: Annotated[int | None, typer.Option(help="Manifest: only this fold's clips.")] = None,
    split: Annotated[str | None, typer.Option(help="Manifest: only this split.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N videos or clips.")
    ] = None,
    device: Annotated[Device, typer.Option()] = Device.auto,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Official checkpoints: model field key=value the weights do "
            "not show (num_heads, decoder_num_heads, img_size, num_frames); any "
            "checkpoint: official_decoder_order=true|false.",
        ),
    ] = None,
) -> None:
    """What a pre-trained MAE reconstructs from a masked face: per window the input, the tube
    mask, the appearance and motion reconstructions (PNG grid, MP4) and the losses."""
    with failures():
        from maedfer.inference.reconstruct_run import run as reconstruct_run_run

        reconstruct_run_run(
            inputs=inputs,
            checkpoint=checkpoint,
            out=out,
            mask_ratio=mask_ratio,
            seed=seed,
            hop=hop,
            device=opt_device(device),
            fold=fold,
            split=split,
            limit=limit,
            model_overrides=set_,
            show=typer.echo,
        )
