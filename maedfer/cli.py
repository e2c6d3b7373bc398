"""The `maedfer` command line (DESIGN.md §2).

Each command declares its options and calls one library function, which behaves the same from
Python and from tests. Library code raises `MaedferError` with a one-line message: it is printed
to stderr here, in one place, and the command exits 1. A command whose library part is not built
yet exits 2 saying so.
"""

from __future__ import annotations

import enum
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from maedfer.errors import MaedferError, NotAvailableYet, Terminated, one_line
from maedfer.lock import WRITING_INTO
from maedfer.pipelines.backend import choices as backend_choices
from maedfer.preprocess import MIN_FACE_RATIO, MIN_FRAMES
from maedfer.quiet import quiet_library_warnings

_LIST_TYPE = re.compile(r"<list\[(\w+)\]>")


def _quiet_types(params: list[click.Parameter], ctx: click.Context) -> list[click.Parameter]:
    """Help without type noise: a flag shows no ``<bool>``, a list ``<path>...`` rather than
    ``<list[Path]>`` (typer's own display, adjusted per parameter)."""
    for param in params:
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.display_type_rich = lambda ctx=None: None  # type: ignore[method-assign]
        elif hasattr(param, "display_type"):
            shown = _LIST_TYPE.sub(lambda m: f"<{m.group(1).lower()}>...",
                                   str(param.display_type(ctx) or ""))  # fmt: skip
            if shown.endswith(">..."):
                param.display_type_rich = lambda ctx=None, s=shown: s  # type: ignore[method-assign]
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _quiet_types(super().get_params(ctx), ctx)


class _Group(TyperGroup):
    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _quiet_types(super().get_params(ctx), ctx)


app = typer.Typer(
    name="maedfer",
    help="Self-supervised dynamic facial expression recognition (MAE-DFER), end to end.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_Group,
)


def _version(value: bool) -> None:
    if value:
        from maedfer import __version__

        typer.echo(f"maedfer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True,
                     help="Print maedfer's version and exit."),
    ] = False,
) -> None:
    pass


def _registered_datasets() -> type[enum.Enum]:
    """The datasets' choices (prepare, evaluate --dataset): every dataset in the registry
    (one module each)."""
    from maedfer.manifests import list_datasets

    return enum.Enum("PrepareDataset", {n.replace("-", "_"): n for n in list_datasets()}, type=str)


PrepareDataset = _registered_datasets()


class Stage(str, enum.Enum):
    data = "data"
    faces = "faces"
    model = "model"
    train = "train"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Codec(str, enum.Enum):
    h264 = "h264"
    vp9 = "vp9"


#: ``--backend`` choices: ``auto`` and the backend table's names (maedfer.pipelines.backend)
Backend = enum.Enum("Backend", {name: name for name in backend_choices()}, type=str)


def _call(module: str, function: str, /, **kwargs: Any) -> Any:
    """Import `module` and call `function(**kwargs)`: the one funnel from library failures to
    exit codes and one line on stderr (maedfer.errors.one_line words the failures of the
    machine, of writes and of worker processes)."""
    quiet_library_warnings()
    try:
        try:
            target = getattr(importlib.import_module(module), function)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                raise NotAvailableYet(f"{module} is not available yet") from exc
            raise
        return target(**kwargs)
    except NotAvailableYet as exc:
        typer.echo(f"maedfer: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt as exc:
        # What was finished is kept (prepare's journal, the last checkpoint): say how to go on.
        how, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        typer.echo(f"maedfer: {how}; run the same command again to resume", err=True)
        raise typer.Exit(code=code) from None
    except Exception as exc:  # noqa: BLE001 (the funnel: every failure ends as one line)
        typer.echo(f"maedfer: error: {_failure_line(exc)}", err=True)
        raise typer.Exit(code=1) from None


def _failure_line(exc: Exception) -> str:
    """The one line of a failure: a MaedferError's message (a worker's re-raised one without
    its traceback), a failure of the machine, or an unexpected error, whose traceback is kept
    in a file for a bug report instead of flooding the terminal."""
    line = one_line(exc)
    if line is None and isinstance(exc, MaedferError):
        line = " ".join(str(exc).split("\n")[0].split())
    if line is None:
        line = _unexpected(exc)
    folder = getattr(exc, WRITING_INTO, None)
    if isinstance(exc, OSError) and not getattr(exc, "filename", None) and folder is not None:
        line += f" (while writing into {folder})"
    return line


def _unexpected(exc: Exception) -> str:
    """An error maedfer did not expect (a bug): one line naming a file with the traceback."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    if os.environ.get("MAEDFER_TRACEBACK"):
        typer.echo(text, err=True)
    try:
        fd, name = tempfile.mkstemp(prefix="maedfer-error-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(" ".join(sys.argv) + "\n\n" + text)
        kept = f"; the traceback is in {name} (please attach it to a bug report)"
    except OSError:
        kept = "; run with MAEDFER_TRACEBACK=1 to see the traceback"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"unexpected {type(exc).__name__}: {first}{kept}"


DeviceOpt = Annotated[
    Device, typer.Option(help="Where to run: cuda (the GPU), cpu, or auto (CUDA when present).")
]


def _opt_value(option: enum.Enum | None) -> str | None:
    return None if option is None else option.value


def _opt_device(device: Device | None) -> str | None:
    return None if device is None or device is Device.auto else device.value


@app.command()
def prepare(
    dataset: Annotated[
        PrepareDataset,
        typer.Argument(help="Which dataset's raw layout to read; folder: your own videos "
                       "(README 'Bring your own dataset')."),
    ],
    raw: Annotated[Path, typer.Option(help="The dataset as downloaded (its root folder).")],
    out: Annotated[Path, typer.Option(help="Where manifest.parquet and clips/ go.")],
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    size: Annotated[int, typer.Option(min=16, help="Side of the square face clips.")] = 160,
    index_only: Annotated[
        bool, typer.Option(help="Write the manifest from the layout alone, touch no pixels.")
    ] = False,
    codec: Annotated[Codec, typer.Option(help="Clip codec: H.264 MP4 or VP9 WebM.")] = Codec.h264,
    from_video: Annotated[
        bool, typer.Option(help="DFEW/FERV39k/MAFW: detect faces in the original clips.")
    ] = False,
    reencode: Annotated[
        bool, typer.Option(help="VoxCeleb2: write cropped clips instead of reading in place.")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(help="i/N: prepare the i-th of N shards (1-based), balanced by file size; "
                     "auto: this Slurm array task's (SLURM_ARRAY_TASK_ID/_MIN/_COUNT)."),
    ] = None,
    merge: Annotated[bool, typer.Option(help="Combine the shard manifests in --out.")] = False,
    device: Annotated[
        Device, typer.Option(help="Face detection device: cuda, cpu, or auto (CUDA when "
                             "present).")
    ] = Device.auto,
    detect_every: Annotated[
        int, typer.Option(min=1, help="Detect faces on every k-th frame, track in between.")
    ] = 4,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Prepare only the first N clips (a trial run).")
    ] = None,
    min_frames: Annotated[
        int,
        typer.Option(min=1, help="Reject videos with fewer frames ('too short'); official "
                     "face-frame folders are exempt."),
    ] = MIN_FRAMES,
    min_face_ratio: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Reject face-detected clips with a face in fewer "
                     "of their frames ('face_ratio')."),
    ] = MIN_FACE_RATIO,
    retry_rejects: Annotated[
        bool, typer.Option(help="Judge every reject of an earlier run in --out again.")
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(help="folder: labels table (.csv/.tsv/.parquet): path (relative to --raw), "
                     "label, optionally subject, split or fold; other columns are kept."),
    ] = None,
    subject_from: Annotated[
        str | None,
        typer.Option(help="folder: regex taking the subject from each file name (its "
                     "'subject' group, else group 1, else the match), e.g. '^(P\\d+)_'."),
    ] = None,
    unlabeled: Annotated[
        bool, typer.Option(help="folder: a pre-training corpus: every video, label -1, split "
                           "pretrain.")
    ] = False,
    classes: Annotated[
        str | None,
        typer.Option(help="folder: class names in label order, comma-separated (default: "
                     "the labels found, sorted)."),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(min=2, help="folder, no split/fold column: build K subject-independent, "
                     "stratified folds (default 5)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="folder: seed of the built folds (default 0).")
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(help="folder: the videos are face crops already: read them in place "
                     "(centred square crop), no face detection; --reencode writes the crops."),
    ] = False,
) -> None:
    """Index a raw dataset, detect and align faces, encode clips, write the manifest."""
    own = {"labels": labels, "subject_from": subject_from, "unlabeled": unlabeled,
           "classes": classes, "folds": folds, "seed": seed, "in_place": in_place}
    _call(
        "maedfer.preprocess.driver", "run",
        dataset=dataset.value, raw=raw, out=out, workers=workers, size=size,
        index_only=index_only, codec=codec.value, from_video=from_video, reencode=reencode,
        shard=shard, merge=merge, device=_opt_device(device), detect_every=detect_every,
        limit=limit, min_frames=min_frames, min_face_ratio=min_face_ratio,
        retry_rejects=retry_rejects,
        dataset_options={k: v for k, v in own.items() if v not in (None, False)},
    )  # fmt: skip


ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", help="Shipped config name (maedfer config list) or a YAML file; "
                 "default: the official recipe."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Dotted override (YAML value), "
                 "repeatable, e.g. --set optim.lr=1e-3 --set model.overrides.depth=2; a mapping "
                 "sets its entries only, an entry set to null is removed."),
]
DryRunOpt = Annotated[
    bool, typer.Option(help="Build the whole recipe, print what would run, train nothing.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="With --dry-run: print one JSON object.")]
DataOpt = Annotated[
    Path | None,
    typer.Option(exists=True, dir_okay=False, help="manifest.parquet (data.manifest)."),
]
class Resume(str, enum.Enum):
    auto = "auto"
    true = "true"
    false = "false"


ResumeOpt = Annotated[
    Resume | None,
    typer.Option(help="auto (default): continue a run of the same recipe in OUT, leave a "
                 "finished one alone; true: a checkpoint must be there; false: OUT must hold "
                 "no run (run.resume)."),
]
OverwriteOpt = Annotated[
    bool, typer.Option(help="Delete the run's files in OUT and start over (run.overwrite).")
]
SaveEveryOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Also keep checkpoints/epoch-NNNN.pt every N epochs "
                 "(run.save_every; run.keep_checkpoints of them)."),
]


@app.command()
def pretrain(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (run.out).", show_default="runs/pretrain"),
    ] = None,
    device: Annotated[
        Device, typer.Option(help="Where to train: cuda, cpu, or auto (CUDA when present; "
                             "run.device).")
    ] = Device.auto,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    save_every: SaveEveryOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """MAE pre-training of LGI-Former on a manifest (default config: pretrain-voxceleb2)."""
    _call(
        "maedfer.recipes.pretrain", "run",
        config=config, overrides=set_, data=data, out=out, device=_opt_device(device),
        resume=_opt_value(resume), overwrite=overwrite or None, save_every=save_every,
        dry_run=dry_run, as_json=json_,
    )  # fmt: skip


@app.command()
def finetune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    fold: Annotated[
        int | None,
        typer.Option(help="Test fold of a k-fold dataset, 1..K (data.fold); none for a "
                     "fixed train/test split.", show_default="none"),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Pre-trained checkpoint (model.init)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (run.out).",
                     show_default="runs/finetune/<dataset>_fold<K>"),
    ] = None,
    device: Annotated[
        Device, typer.Option(help="Where to train: cuda, cpu, or auto (CUDA when present; "
                             "run.device).")
    ] = Device.auto,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    save_every: SaveEveryOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune a classifier on one fold and test it (default config: finetune-dfew)."""
    _call(
        "maedfer.recipes.finetune", "run",
        config=config, overrides=set_, data=data, fold=fold, init=init, out=out,
        device=_opt_device(device), resume=_opt_value(resume), overwrite=overwrite or None,
        save_every=save_every, dry_run=dry_run, as_json=json_,
    )  # fmt: skip


def _usage(message: str) -> None:
    """A command-line mistake that no library function sees: one line, exit 1."""
    typer.echo(f"maedfer: error: {message}", err=True)
    raise typer.Exit(code=1)


config_app = typer.Typer(
    help="Recipe configs: the shipped ones, and any config resolved with overrides.",
    no_args_is_help=True,
    cls=_Group,
)
app.add_typer(config_app, name="config")


@config_app.command("list")
def config_list() -> None:
    """Names of the shipped configs (use them with --config NAME)."""
    _call("maedfer.cli", "_print_configs")


@config_app.command("show")
def config_show(
    name: Annotated[str, typer.Argument(help="Shipped config name or a YAML file.")],
    set_: SetOpt = None,
) -> None:
    """Print a config resolved with its overrides, as YAML (copy it, edit it, run it)."""
    _call("maedfer.cli", "_print_config", source=name, overrides=set_)


def _print_configs() -> None:
    import shutil
    import textwrap

    from maedfer.recipes.config import describe_config, list_configs

    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    for name in list_configs():
        print(textwrap.fill(describe_config(name), width=width, initial_indent=f"{name:24s} ",
                            subsequent_indent=" " * 25))  # fmt: skip


def _print_config(*, source: str, overrides: list[str] | None) -> None:
    from maedfer.recipes.config import load, to_yaml

    print(to_yaml(load(source, overrides=overrides)), end="")


@app.command()
def evaluate(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(exists=True, help="Run folder(s); or none, with --checkpoint."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Several runs: folder for evaluation.json and confusion_pooled.png "
            "(default: the folder holding all runs). --checkpoint: folder for report.json "
            "and predictions.parquet (required).",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Test this fine-tuned checkpoint "
                     "(a finetune run's last.pt, or an official MAE-DFER .pth) instead."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="--checkpoint: manifest.")
    ] = None,
    fold: Annotated[
        int | None, typer.Option(help="--checkpoint: test fold, 1..K (k-fold datasets).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="--checkpoint: test split (fixed split; default test).")
    ] = None,
    dataset: Annotated[
        PrepareDataset | None,
        typer.Option(help="--checkpoint: refuse a manifest of another dataset."),
    ] = None,
    device: Annotated[
        Device, typer.Option(help="--checkpoint: where to run: cuda, cpu, or auto (CUDA when "
                             "present).")
    ] = Device.auto,
    backend: Annotated[Backend, typer.Option(help="--checkpoint: decoding.")] = Backend("auto"),
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="--checkpoint: clips per batch.",
                     show_default="the checkpoint's recipe's, else 32"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="--checkpoint: loader worker processes (PyAV) or threads "
                     "(DALI).", show_default="from the core count"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="--checkpoint, official: model field key=value the weights "
                     "do not show (num_heads, img_size, num_frames), repeatable."),
    ] = None,
) -> None:
    """Metrics of one run, or the cross-fold summary of several (per-fold mean and pooled); or,
    with --checkpoint, the reference test of a checkpoint on one fold (2 views, softmax mean)."""
    if checkpoint is None:
        given = [f"--{name.replace('_', '-')}" for name, value in (
            ("data", data), ("fold", fold), ("split", split), ("dataset", dataset),
            ("batch_size", batch_size), ("workers", workers), ("set", set_),
        ) if value is not None]  # fmt: skip
        if not runs:
            _usage("give run folder(s), or --checkpoint CKPT --data M.parquet --out DIR")
        if given:
            _usage(f"{', '.join(given)} go with --checkpoint only, not with run folders")
        _call("maedfer.evaluation.evaluate", "run", runs=runs, as_json=json_, out=out)
        return
    if runs:
        _usage("give run folders or --checkpoint, not both")
    if data is None or out is None:
        _usage("--checkpoint needs --data M.parquet and --out DIR")
    _call(
        "maedfer.evaluation.testing", "run",
        checkpoint=checkpoint, data=data, out=out, fold=fold, split=split,
        dataset=dataset.value if dataset else None, device=_opt_device(device),
        backend=backend.value, batch_size=batch_size, workers=workers, model_overrides=set_,
        as_json=json_,
    )  # fmt: skip


@app.command()
def protocol(
    config: Annotated[str, typer.Argument(help="Fine-tuning config for every fold: a YAML file of "
                                      "finetune options (epochs: 100, ...).")],
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="manifest.parquet")],
    out: Annotated[Path, typer.Option(file_okay=False, help="fold_K/ and summary.json go here.")],
    init: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Pre-trained checkpoint (every fold starts from it; "
                     "with --model, the start of each model given without its own)."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="NAME or NAME=INIT: run the protocol for each model in "
                     "OUT/NAME, then one table of all (comparison.json); repeatable."),
    ] = None,
    folds: Annotated[
        str | None, typer.Option(help="Only these folds, e.g. 1,3 (default: every fold).")
    ] = None,
    print_commands: Annotated[
        bool, typer.Option(help="Print the per-fold commands instead of running them.")
    ] = False,
    sbatch: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Write a SLURM array job (a task per fold) instead."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Recipe override key=value for every fold, repeatable."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
) -> None:
    """Fine-tune and test every fold in turn (finished folds are kept), then the cross-fold
    summary beside the model's published figures; with --model, several models and one table."""
    _call(
        "maedfer.recipes.protocol", "run",
        config=config, data=data, init=init, out=out, folds=folds,
        print_commands=print_commands, sbatch=sbatch, overrides=set_, models=model,
        as_json=json_,
    )  # fmt: skip


class ExportFormat(str, enum.Enum):
    safetensors = "safetensors"
    onnx = "onnx"


CheckpointOpt = Annotated[
    Path,
    typer.Option(exists=True, dir_okay=False, help="A finetune run's last.pt, its final.pt, or "
                 "an official MAE-DFER fine-tuned .pth."),
]
DatasetClassesOpt = Annotated[
    PrepareDataset | None,
    typer.Option("--dataset", help="Official checkpoints: the dataset it was fine-tuned on; "
                 "its label order names the outputs."),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(help="Official checkpoints: the output names in order, comma-separated."),
]
ModelSetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Official checkpoints: model field key=value the weights do not "
                 "show (num_heads, img_size, num_frames), repeatable."),
]
HopOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Window hop in sampled frames (default: half a window)."),
]


@app.command()
def predict(
    videos: Annotated[
        list[str] | None,
        typer.Argument(help="Video files, folders (their videos) or glob patterns; none with "
                       "--camera or --stream."),
    ] = None,
    checkpoint: CheckpointOpt = ...,
    out: Annotated[
        Path | None,
        typer.Option(help="results.parquet, .csv or .json: one row per window, and a "
                     "per-video table (beside it as results.videos.*, or inside the JSON); "
                     "live (--camera, --stream, --realtime): results.jsonl, a line per window "
                     "as it is scored (default: stdout)."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Timeline PNG (a folder of them for several videos)."),
    ] = None,
    overlay: Annotated[
        Path | None,
        typer.Option(help="The video with the face and probabilities drawn, .mp4 (a folder "
                     "for several videos)."),
    ] = None,
    dataset: DatasetClassesOpt = None,
    classes: ClassesOpt = None,
    device: DeviceOpt = Device.auto,
    hop: HopOpt = None,
    set_: ModelSetOpt = None,
    explain: Annotated[
        bool,
        typer.Option(help="Where each window's evidence lies: Grad-CAM over the token grid (and "
                     "the representative tokens' attention), as heat over the face in --overlay, "
                     "strips in --plot, frame_relevance and peak_frame in the table."),
    ] = False,
    camera: Annotated[
        str | None,
        typer.Option(help="Live: read this camera (0, 1, ... or a device such as /dev/video2) "
                     "and score each window as its frames come."),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(help="Live: read this stream (rtsp://, http://, udp://, ...) as it comes."),
    ] = None,
    realtime: Annotated[
        bool,
        typer.Option(help="Live: play the one VIDEO (or --stream) at its frame rate, as if it "
                     "came from a camera."),
    ] = False,
    max_lag: Annotated[
        float | None,
        typer.Option(min=0.0, help="Live: drop the frames waiting when the oldest is this many "
                     "seconds old (default: one window hop, at least 1 s)."),
    ] = None,
) -> None:
    """Per-window class probabilities for the face in each video, and a per-video summary;
    live from a camera or a stream, a JSON line per window as it is scored."""
    if camera is not None or stream is not None or realtime:
        if plot is not None or overlay is not None:
            _usage("--plot and --overlay need a whole video, not a live source")
        if videos and len(videos) > 1:
            _usage("--realtime plays one video")
        _call(
            "maedfer.inference.live", "run",
            checkpoint=checkpoint, camera=camera, stream=stream,
            video=videos[0] if videos else None, realtime=realtime, out=out, max_lag=max_lag,
            explain=explain, device=_opt_device(device), dataset=_opt_value(dataset),
            classes=classes, hop=hop, model_overrides=set_,
        )  # fmt: skip
        return
    if not videos:
        _usage("give video files, folders or patterns, or --camera N / --stream URL")
    if max_lag is not None:
        _usage("--max-lag goes with --camera, --stream or --realtime")
    _call(
        "maedfer.inference.predict", "run",
        videos=videos, checkpoint=checkpoint, out=out, plot=plot, overlay=overlay,
        device=_opt_device(device), dataset=_opt_value(dataset), classes=classes, hop=hop,
        model_overrides=set_, explain=explain,
    )  # fmt: skip


@app.command()
def reconstruct(
    inputs: Annotated[
        list[str], typer.Argument(help="Videos (files, folders, globs), or one manifest.parquet.")
    ],
    checkpoint: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="A pretrain run's last.pt or final.pt, or "
                     "an official MAE-DFER pre-trained .pth (not a classifier)."),
    ],
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder for the pictures, the "
                                      "videos and losses.csv.")],
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
        typer.Option("--set", help="Official checkpoints: model field key=value the weights do "
                     "not show (num_heads, decoder_num_heads, img_size, num_frames); any "
                     "checkpoint: official_decoder_order=true|false."),
    ] = None,
) -> None:
    """What a pre-trained MAE reconstructs from a masked face: per window the input, the tube
    mask, the appearance and motion reconstructions (PNG grid, MP4) and the losses."""
    _call(
        "maedfer.inference.reconstruct_run", "run",
        inputs=inputs, checkpoint=checkpoint, out=out, mask_ratio=mask_ratio, seed=seed,
        hop=hop, device=_opt_device(device), fold=fold, split=split, limit=limit,
        model_overrides=set_,
    )  # fmt: skip


@app.command()
def export(
    checkpoint: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="last.pt, final.pt or an "
                             "official MAE-DFER fine-tuned .pth.")
    ],
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="safetensors (+ config.json) or onnx.")
    ],
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder for the files.")],
    dataset: DatasetClassesOpt = None,
    classes: ClassesOpt = None,
    set_: ModelSetOpt = None,
) -> None:
    """Write the classifier as safetensors + config.json, or as ONNX checked with onnxruntime."""
    _call(
        "maedfer.inference.export", "run",
        checkpoint=checkpoint, format=format_.value, out=out, dataset=_opt_value(dataset),
        classes=classes, model_overrides=set_,
    )  # fmt: skip


@app.command()
def embed(
    inputs: Annotated[
        list[str], typer.Argument(help="Videos (files, folders, globs), or one manifest.parquet.")
    ],
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(dir_okay=False, help="features.parquet")],
    fold: Annotated[
        int | None,
        typer.Option(help="Manifest: only this fold's clips.", show_default="every clip"),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Manifest: only this split.", show_default="every clip")
    ] = None,
    dataset: DatasetClassesOpt = None,
    classes: ClassesOpt = None,
    device: DeviceOpt = Device.auto,
    hop: HopOpt = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Manifest: clips per batch.", show_default="8")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Manifest: loader worker processes.",
                     show_default="from the core count"),
    ] = None,
) -> None:
    """Pooled, normalised features per window of each video, or per clip of a manifest."""
    _call(
        "maedfer.inference.embed", "run",
        inputs=inputs, checkpoint=checkpoint, out=out, device=_opt_device(device), fold=fold,
        split=split, hop=hop, dataset=_opt_value(dataset), classes=classes,
        batch_size=batch_size, workers=workers,
    )  # fmt: skip


@app.command()
def profile(
    stage: Annotated[
        Stage | None, typer.Argument(help="Which stage to measure; all of them when absent.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="model/train: model name; model: also a comma-separated list, or "
                     "'lineage' (every model of docs/models.md beside LGI-Former).",
                     show_default="lgi_former_base"),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(min=1, help="Clips per batch (faces: frames per network batch).",
                     show_default="model 1, train 2, data 8, faces 32 on CPU; model 8, train "
                     "32, data 32 on CUDA"),
    ] = None,
    batches: Annotated[
        int | None,
        typer.Option(min=1, help="Batches to time.",
                     show_default="model/train/faces 2, data 5 on CPU; more on CUDA"),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="data: manifest.parquet to read (required for the data stage)."),
    ] = None,
    backend: Annotated[Backend, typer.Option(help="data: decoding backend.")] = Backend("auto"),
    workers: Annotated[
        int | None,
        typer.Option(help="data: loader worker processes.", show_default="from the core count"),
    ] = None,
    device: DeviceOpt = Device.auto,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Throughput of one stage on this machine (table, or JSON with --json)."""
    common: dict[str, Any] = dict(device=_opt_device(device), as_json=json_)
    if stage is None:
        _call("maedfer.profile_all", "run", **common)
    elif stage is Stage.model:
        _call("maedfer.model.profile", "run", name=name, batch=batch, batches=batches, **common)
    elif stage is Stage.train:
        _call("maedfer.recipes.profile", "run", name=name, batch=batch, batches=batches, **common)
    elif stage is Stage.faces:
        _call("maedfer.preprocess.profile", "run", batch=batch, batches=batches, **common)
    else:
        _call(
            "maedfer.pipelines.profile", "run",
            data=data, backend=backend.value, batch=batch, batches=batches, workers=workers,
            **common,
        )  # fmt: skip


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(
        "runs/demo"
    ),
    device: DeviceOpt = Device.auto,
    quick: Annotated[bool, typer.Option(help="A shortened run (what the tests use).")] = False,
) -> None:
    """The whole pipeline on built-in demo data, on CPU in minutes."""
    _call("maedfer.demo", "run", out=out, device=_opt_device(device), quick=quick)


for _info in (*app.registered_commands, *config_app.registered_commands):
    if _info.cls in (None, TyperCommand):
        _info.cls = _Command


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
