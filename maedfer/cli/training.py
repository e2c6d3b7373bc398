"""What ``pretrain`` and ``finetune`` print, and how they exit (docs/runs.md): the ``--dry-run``
text or JSON, the summary of a finished run, the line of a run found finished, and the exit
status of a run stopped by a signal (130 for SIGINT, else 143). Under torchrun only rank 0
prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from maedfer.cli.common import echo_json


def present(result: dict[str, Any], *, dry_run: bool, as_json: bool, summary: str) -> None:
    """Print a recipe's result (rank 0 only) and exit 130/143 when a signal stopped it."""
    from maedfer.training.distributed import is_main_process
    from maedfer.training.runtime import stop_exit_code

    if not is_main_process():
        return
    if result.get("finished"):
        typer.echo(result["message"])
        return
    if dry_run:
        if as_json:
            echo_json(result)
        else:
            typer.echo(format_description(result))
        return
    typer.echo(summary)
    if result.get("stopped_by"):
        raise typer.Exit(code=stop_exit_code(result["stopped_by"]))


def format_description(d: dict[str, Any]) -> str:
    """The human-readable ``--dry-run`` text of a recipe's ``describe()`` dict."""
    data, sched, opt = d["data"], d["schedule"], d["optimizer"]
    aug = (
        ", ".join(a["name"] + (f" {a['policy']}" if "policy" in a else "") for a in data["augment"])
        or "none"
    )
    lines = [
        f"{d['recipe']} (dry run: built, nothing trained or written)",
        f"  model: {d['model']['name']}, {d['model']['params']:,} parameters "
        f"({d['model']['trainable_params']:,} trainable)",
        f"  data: {data['train_clips']} train clips"
        + (f", {data['test_clips']} test clips" if data.get("test_clips") is not None else "")
        + f", backend {data['backend']}, window {data['temporal_rule']} "
        f"(stride {d['config']['data']['stride']})",
        f"  augment: {aug}",
        f"  optimizer: AdamW betas {tuple(opt['betas'])}, {len(opt['groups'])} groups of "
        "(lr scale, weight decay)",
        f"  schedule: {sched['steps']} steps ({sched['steps_per_epoch']}/epoch), warmup "
        f"{sched['warmup_steps']}, peak lr {sched['peak_lr']:.4g}, min lr {sched['min_lr']:.4g}",
        f"  precision {d['precision']}, world size {d['world_size']}, total batch "
        f"{d['total_batch']}",
        f"  run folder: {d['config']['run']['out']}",
    ]
    return "\n".join(lines)


def _headline(recipe: str, result: dict[str, Any]) -> str:
    stopped = f", stopped by {result['stopped_by']}" if result["stopped_by"] else ""
    return (
        f"{recipe}: {result['epochs']} epoch(s), {result['steps']} optimiser steps in "
        f"{result['time_s']:.1f} s{stopped}"
    )


def _tail(result: dict[str, Any]) -> list[str]:
    from maedfer.training import badclips

    lines = []
    if result["nonfinite_steps"]:
        lines.append(f"  non-finite loss: {result['nonfinite_steps']} step(s) skipped")
    return lines + badclips.summary_lines(result)


def pretrain_summary(result: dict[str, Any]) -> str:
    """The lines ``maedfer pretrain`` ends with."""
    if result.get("finished") or "epochs" not in result:
        return ""
    loss = result["loss"]
    lines = [
        _headline("pretrain", result),
        f"  last epoch loss: {loss:.4f}" if loss is not None else "  no epoch completed",
        f"  checkpoint: {result['checkpoint']}",
        f"  metrics: {Path(result['out']) / 'metrics.jsonl'}",
    ]
    return "\n".join(lines + _tail(result))


def finetune_summary(result: dict[str, Any]) -> str:
    """The lines ``maedfer finetune`` ends with: the test figures beside chance."""
    from maedfer.evaluation.coverage import describe_missing

    if result.get("finished") or "epochs" not in result:
        return ""
    lines = [_headline("finetune", result)]
    report = result["report"]
    if report is not None:
        present = sum(r is not None for r in report["per_class_recall"].values())
        scored, expected = report["clips_scored"], report["clips_expected"]
        lines.append(
            f"  test: UAR {report['uar']:.4f}  WAR {report['war']:.4f}  on {scored} of {expected} "
            f"clips, {report['views']} views (chance UAR {1 / max(present, 1):.4f})"
        )
        if not report["complete"]:
            missing = report["missing_clips"]
            lines.append(
                f"  INCOMPLETE: {describe_missing(len(missing), expected, missing)} "
                "(all listed in report.json under missing_clips)"
            )
        lines.append(f"  report: {Path(result['out']) / 'report.json'}")
    lines.append(f"  checkpoint: {result['checkpoint']}")
    return "\n".join(lines + _tail(result))
