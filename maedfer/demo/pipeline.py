"""``maedfer demo``: the whole pipeline on a dataset rendered from the committed portraits.

Stages, each the real command a user would run (docs/design.md, issue 6):

1. render   — :mod:`maedfer.demo.render` writes videos and ``labels.csv`` under ``OUT/raw``;
2. prepare  — ``maedfer prepare folder --labels OUT/raw/labels.csv`` on them (the demo is the
   first folder dataset: its own five class names, one fold per portrait): real MTCNN,
   alignment, H.264 clips, manifest;
3. pretrain — MAE pre-training of a tiny LGI-Former on every prepared clip (no labels);
4. finetune — one run per fold (leave one portrait out), initialised from the pre-training;
5. evaluate — UAR/WAR per fold, their mean (as MAE-DFER reports) and pooled, against chance.

Every stage is timed and its throughput recorded (``OUT/profile.json``); ``OUT/summary.json``
holds the figures and where everything went. A re-run reuses rendered videos and prepared
clips (both stages are resumable) and trains again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from maedfer.demo import render
from maedfer.errors import MaedferError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the rendered data; the training recipes are the shipped ``demo-pretrain`` and
    ``demo-finetune`` configs (a tiny LGI-Former: 64-wide, 2 blocks, 16x16 tubelets, 2x2x2
    regions, on 64 px clips), changed by the dotted overrides here. The defaults fit 10
    minutes on a 2-core CPU."""

    actors_per_portrait: int = 4  # appearance variants of each portrait (one subject)
    clips_per_class: int = 8
    num_frames: int = 16
    frame_size: int = 192
    folds: tuple[int, ...] | None = None  # None: one per portrait
    pretrain_config: str = "demo-pretrain"
    finetune_config: str = "demo-finetune"
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    finetune_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


QUICK = DemoConfig(
    actors_per_portrait=1,
    clips_per_class=2,
    folds=(1, 2),
    pretrain_overrides={"schedule.epochs": 1, "schedule.warmup_epochs": 0.25, "data.batch_size": 8},
    finetune_overrides={"schedule.epochs": 2, "data.batch_size": 8},
)


@dataclass
class Stage:
    name: str
    seconds: float
    amount: float
    unit: str

    @property
    def rate(self) -> float:
        return self.amount / self.seconds if self.seconds > 0 else float("nan")


def _timed(
    stages: list[Stage],
    name: str,
    unit: str,
    work: Callable[[], tuple[Any, float]],
    show: Callable[[str], None],
) -> Any:
    """Run ``work`` (returning its result and the amount it processed) and record the stage."""
    show(f"\n== {name} ==")
    start = time.perf_counter()
    result, amount = work()
    stages.append(Stage(name, time.perf_counter() - start, float(amount), unit))
    return result


def run(
    *,
    out: Path = Path("runs/demo"),
    device: str | None = None,
    quick: bool = False,
    show: Callable[[str], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Render, prepare, pre-train, fine-tune per fold, evaluate and profile; print a summary.

    Args:
        out: everything goes under this folder (created; reused by a re-run).
        device: "cpu" or "cuda" (None: CUDA when present).
        quick: a shortened run (2 folds, 2 clips per class, 1 + 2 epochs) for the tests.
        show, notify: take the lines for stdout (each stage, the summary) and stderr (warnings);
            the command line prints them, nothing is printed here.

    Returns:
        The summary written to ``out/summary.json``.

    Raises:
        MaedferError: unwritable ``out``, or a stage's own error.
    """
    from maedfer.lock import hold

    cfg = QUICK if quick else DemoConfig()
    with hold(Path(out)):
        return run_config(cfg, out=Path(out), device=device, show=show, notify=notify)


def run_config(
    cfg: DemoConfig,
    *,
    out: Path,
    device: str | None = None,
    show: Callable[[str], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """:func:`run` with an explicit :class:`DemoConfig`."""
    emit, warn = show or (lambda _line: None), notify or (lambda _line: None)
    from maedfer.evaluation import evaluate, metrics
    from maedfer.preprocess import driver
    from maedfer.preprocess.faces import cpu_threads
    from maedfer.recipes import config as config_io

    started = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MaedferError(f"demo: cannot create {out}: {exc.strerror}") from None
    portraits = render.default_portraits()
    folds = cfg.folds or tuple(range(1, len(portraits) + 1))
    stages: list[Stage] = []
    paths = {
        "raw": out / "raw",
        "prepared": out / "prepared",
        "pretrain": out / "pretrain",
        "finetune": out / "finetune",
    }
    frames = cfg.num_frames
    cores = os.cpu_count() or 1
    common = {"data.workers": min(4, cores), "run.seed": cfg.seed}
    recipes = (
        config_io.load(
            cfg.pretrain_config, recipe="pretrain", overrides={**common, **cfg.pretrain_overrides}
        ),
        config_io.load(
            cfg.finetune_config, recipe="finetune", overrides={**common, **cfg.finetune_overrides}
        ),
    )
    clip_size = recipes[1].model.img_size  # the prepared clips are the model's input size

    def do_render() -> tuple[list[render.RenderedClip], float]:
        clips = render.render_dataset(
            paths["raw"],
            portraits=portraits,
            actors_per_portrait=cfg.actors_per_portrait,
            clips_per_class=cfg.clips_per_class,
            num_frames=frames,
            frame_size=cfg.frame_size,
            seed=cfg.seed,
            workers=min(2, os.cpu_count() or 1),
        )
        return clips, len(clips)

    clips = _timed(stages, "render", "clips", do_render, emit)

    def do_prepare() -> tuple[dict[str, Any], float]:
        summary = driver.run(
            dataset="folder",
            raw=paths["raw"],
            out=paths["prepared"],
            size=clip_size,
            workers=min(2, os.cpu_count() or 1),
            device=device,
            dataset_options={
                "labels": paths["raw"] / render.LABELS,
                "classes": [c.name for c in render.CLASSES],
            },
            show=emit,
        )
        return summary, summary["ok"] * frames

    prepared = _timed(stages, "prepare (faces)", "frames", do_prepare, emit)
    if prepared["rejected"]:
        log.warning(
            "demo: %d clips rejected by prepare: %s", prepared["rejected"], prepared["reasons"]
        )
    manifest = paths["prepared"] / "manifest.parquet"
    train_clips = prepared["ok"]

    # Decoding the small clips is the bottleneck of a tiny model on CPU: the loader's workers
    # take the cores and torch one thread (measured 1.65x faster than torch's default on 2 cores).
    with cpu_threads(max(1, cores - common["data.workers"])):
        pre, runs = _train(stages, recipes, paths, manifest, device, folds, train_clips, emit)

    def do_evaluate() -> tuple[dict[str, Any], float]:
        found = evaluate.evaluate_runs([Path(r["out"]) for r in runs], out=out)
        for line in found.warnings():
            warn(line)
        emit(found.text())
        return found.payload, len(runs)

    evaluation = _timed(stages, "evaluate", "runs", do_evaluate, emit)
    summary = _summary(cfg, out, paths, clips, prepared, pre, runs, evaluation, stages, started)
    metrics.write_report(out / "profile.json", {"stages": summary["stages"]})
    metrics.write_report(out / "summary.json", summary)
    emit(format_summary(summary))
    return summary


def _train(
    stages: list[Stage],
    recipes: tuple[Any, Any],
    paths: dict[str, Path],
    manifest: Path,
    device: str | None,
    folds: tuple[int, ...],
    train_clips: int,
    emit: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pre-train once, then fine-tune and test each fold from the pre-trained weights."""
    from maedfer.recipes import finetune, pretrain

    pre_cfg, ft_cfg = recipes

    def do_pretrain() -> tuple[dict[str, Any], float]:
        result = pretrain.run(pre_cfg, data=manifest, out=paths["pretrain"], device=device)
        return result, train_clips * result["epochs"]

    pre = _timed(stages, "pretrain", "clips", do_pretrain, emit)
    runs = []
    for fold in folds:

        def do_finetune(fold: int = fold) -> tuple[dict[str, Any], float]:
            result = finetune.run(
                ft_cfg,
                data=manifest,
                fold=fold,
                init=Path(pre["checkpoint"]),
                out=paths["finetune"] / f"fold_{fold}",
                device=device,
            )
            seen = result["steps"] * ft_cfg.data.batch_size
            return result, seen

        runs.append(_timed(stages, f"finetune fold {fold}", "clips", do_finetune, emit))

    return pre, runs


def _summary(cfg, out, paths, clips, prepared, pre, runs, evaluation, stages, started) -> dict:
    classes = render.CLASSES
    chance = 1 / len(classes)
    mean = evaluation["mean_over_folds"]
    return {
        "classes": [c.name for c in classes],
        "subjects": sorted({c.subject for c in clips}),
        "clips": {
            "rendered": len(clips),
            "prepared": prepared["ok"],
            "rejected": prepared["rejected"],
        },
        "chance": chance,
        "uar": mean["uar"],
        "war": mean["war"],
        "uar_over_chance": mean["uar"] / chance,
        "folds": [
            {
                "fold": r["report"]["fold"],
                "uar": r["report"]["uar"],
                "war": r["report"]["war"],
                "report": str(Path(r["out"]) / "report.json"),
            }
            for r in runs
        ],
        "pooled": {"uar": evaluation["pooled"]["uar"], "war": evaluation["pooled"]["war"]},
        "stages": [asdict(s) | {"rate": s.rate} for s in stages],
        "seconds": time.perf_counter() - started,
        "paths": {
            "raw videos": str(paths["raw"]),
            "manifest": str(paths["prepared"] / "manifest.parquet"),
            "clips": str(paths["prepared"] / "clips"),
            "pretrained checkpoint": pre["checkpoint"],
            "fine-tuned checkpoints": str(paths["finetune"] / "fold_*" / "checkpoints"),
            "reports": str(paths["finetune"] / "fold_*" / "report.json"),
            "evaluation": evaluation.get("summary_json"),
            "confusion plot": evaluation.get("pooled_confusion_png"),
            "profile": str(out / "profile.json"),
            "summary": str(out / "summary.json"),
        },
        "config": asdict(cfg),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of the demo."""
    lines = ["", "maedfer demo: done in {:.0f} s".format(summary["seconds"]), ""]
    lines.append("classes: " + ", ".join(summary["classes"]))
    lines.append(f"subjects (one per fold): {', '.join(summary['subjects'])}")
    lines.append("")
    lines.append(f"{'stage':20s}{'seconds':>9s}  throughput")
    for s in summary["stages"]:
        lines.append(f"{s['name']:20s}{s['seconds']:9.1f}  {s['rate']:.1f} {s['unit']}/s")
    lines.append("")
    for f in summary["folds"]:
        lines.append(f"fold {f['fold']}: UAR {f['uar']:.3f}  WAR {f['war']:.3f}")
    lines.append(
        f"mean over folds: UAR {summary['uar']:.3f}  WAR {summary['war']:.3f}  "
        f"(chance {summary['chance']:.3f}; UAR = {summary['uar_over_chance']:.1f}x chance)"
    )
    lines.append("")
    width = max(len(k) for k in summary["paths"])
    lines += [f"{k:{width}s}  {v}" for k, v in summary["paths"].items() if v]
    return "\n".join(lines)


__all__ = ["DemoConfig", "QUICK", "format_summary", "run", "run_config"]
