"""``maedfer predict``: per-window class probabilities, from files or live
(:mod:`maedfer.inference.predict`, :mod:`maedfer.inference.live`).

Documented in docs/design.md, "The command line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maedfer.cli.common import (
    CheckpointOpt,
    ClassesOpt,
    DatasetClassesOpt,
    Device,
    DeviceOpt,
    HopOpt,
    ModelSetOpt,
    failures,
    opt_device,
    opt_value,
    usage,
)


def predict(
    checkpoint: CheckpointOpt,
    videos: Annotated[
        list[str] | None,
        typer.Argument(
            help="Video files, folders (their videos) or glob patterns; none with "
            "--camera or --stream."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="results.parquet, .csv or .json: one row per window, and a "
            "per-video table (beside it as results.videos.*, or inside the JSON); "
            "live (--camera, --stream, --realtime): results.jsonl, a line per window "
            "as it is scored (default: stdout)."
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Timeline PNG (a folder of them for several videos)."),
    ] = None,
    overlay: Annotated[
        Path | None,
        typer.Option(
            help="The video with the face and probabilities drawn, .mp4 (a folder "
            "for several videos)."
        ),
    ] = None,
    dataset: DatasetClassesOpt = None,
    classes: ClassesOpt = None,
    device: DeviceOpt = Device.auto,
    hop: HopOpt = None,
    set_: ModelSetOpt = None,
    explain: Annotated[
        bool,
        typer.Option(
            help="Where each window's evidence lies: Grad-CAM over the token grid (and "
            "the representative tokens' attention), as heat over the face in --overlay, "
            "strips in --plot, frame_relevance and peak_frame in the table."
        ),
    ] = False,
    camera: Annotated[
        str | None,
        typer.Option(
            help="Live: read this camera (0, 1, ... or a device such as /dev/video2) "
            "and score each window as its frames come."
        ),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(help="Live: read this stream (rtsp://, http://, udp://, ...) as it comes."),
    ] = None,
    realtime: Annotated[
        bool,
        typer.Option(
            help="Live: play the one VIDEO (or --stream) at its frame rate, as if it "
            "came from a camera."
        ),
    ] = False,
    max_lag: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Live: drop the frames waiting when the oldest is this many "
            "seconds old (default: one window hop, at least 1 s).",
        ),
    ] = None,
) -> None:
    """Per-window class probabilities for the face in each video, and a per-video summary;
    live from a camera or a stream, a JSON line per window as it is scored."""
    if camera is not None or stream is not None or realtime:
        if plot is not None or overlay is not None:
            usage("--plot and --overlay need a whole video, not a live source")
        if videos and len(videos) > 1:
            usage("--realtime plays one video")
        with failures():
            from maedfer.inference.live import run as live_run

            live_run(
                checkpoint=checkpoint,
                camera=camera,
                stream=stream,
                video=videos[0] if videos else None,
                realtime=realtime,
                out=out,
                max_lag=max_lag,
                explain=explain,
                device=opt_device(device),
                dataset=opt_value(dataset),
                classes=classes,
                hop=hop,
                model_overrides=set_,
                show=typer.echo,
                notify=_stderr,
            )
        return
    if not videos:
        usage("give video files, folders or patterns, or --camera N / --stream URL")
    if max_lag is not None:
        usage("--max-lag goes with --camera, --stream or --realtime")
    with failures():
        from maedfer.inference.predict import run as predict_run

        predict_run(
            videos=videos,
            checkpoint=checkpoint,
            out=out,
            plot=plot,
            overlay=overlay,
            device=opt_device(device),
            dataset=opt_value(dataset),
            classes=classes,
            hop=hop,
            model_overrides=set_,
            explain=explain,
            show=typer.echo,
        )


def _stderr(line: str) -> None:
    typer.echo(line, err=True)
