"""Bad input to the training commands ends in one line, never a traceback (docs/design.md).

Each case runs through the real CLI on a tiny real manifest and real clips: exit code 1, and
what the terminal shows is exactly one line starting ``maedfer: error:`` that names the file and
what is wrong with it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner, Result

from maedfer.cli import app
from maedfer.recipes.finetune import FinetuneRecipe
from tests.recipes.clipdata import (
    TINY_FINETUNE_KEYS,
    TINY_PRETRAIN_KEYS,
    cli_sets,
    make_dataset,
    one_thread,
)

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()


def finetune(data: Path, out: Path, *extra: str) -> Result:
    return runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(data),
            "--fold",
            "1",
            "--out",
            str(out),
            *cli_sets(
                {
                    **TINY_FINETUNE_KEYS,
                    "schedule.epochs": 2,
                    "data.batch_size": 2,
                    "data.workers": 0,
                    "loss.mixup": 0,
                    "loss.cutmix": 0,
                }
            ),
            *extra,
        ],
    )


def pretrain(data: Path, out: Path, *extra: str) -> Result:
    return runner.invoke(
        app,
        [
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(out),
            *cli_sets(
                {
                    **TINY_PRETRAIN_KEYS,
                    "schedule.epochs": 1,
                    "data.batch_size": 2,
                    "data.workers": 0,
                }
            ),
            *extra,
        ],
    )


def error_line(result: Result) -> str:
    """The one line the user sees, checked to be a ``maedfer: error:`` line.

    A progress bar redraws its line with carriage returns; the terminal keeps what follows the
    last one, so that is what counts as the line's text.
    """
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )  # an uncaught exception would print a traceback
    assert "Traceback" not in result.output
    shown = [line.split("\r")[-1] for line in result.output.split("\n")]
    shown = [line for line in shown if line.strip()]
    assert len(shown) == 1 and shown[0].startswith("maedfer: error: "), shown
    return shown[0]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("bad-input"), clips_per_class=4)  # 12 clips


def _rewrite(manifest: Path, target: Path, column: str, values: pa.Array) -> Path:
    """A copy of ``manifest`` (same folder, so the clips resolve) with one column replaced."""
    table = pq.read_table(manifest)
    table = table.set_column(table.column_names.index(column), column, values)
    pq.write_table(table.replace_schema_metadata(pq.read_schema(manifest).metadata), target)
    return target


def test_string_labels(manifest: Path, tmp_path: Path) -> None:
    labels = pq.read_table(manifest).column("label").to_pylist()
    bad = _rewrite(
        manifest,
        manifest.parent / "strings.parquet",
        "label",
        pa.array([f"class{v}" for v in labels]),
    )
    line = error_line(finetune(bad, tmp_path / "run"))
    assert str(bad) in line and "column 'label' holds string values; expected integers" in line


def test_label_past_the_classes(manifest: Path, tmp_path: Path) -> None:
    labels = pq.read_table(manifest).column("label").to_pylist()
    labels[1] = 7  # c0_01 is in fold 2: a training clip of fold 1
    bad = _rewrite(
        manifest, manifest.parent / "label7.parquet", "label", pa.array(labels, pa.int16())
    )
    line = error_line(finetune(bad, tmp_path / "run"))
    assert str(bad) in line and "clip c0_01 has label 7" in line
    assert "names 3 classes (labels 0..2)" in line


def test_all_clip_files_missing(tmp_path: Path) -> None:
    gone = make_dataset(tmp_path / "gone", clips_per_class=2)  # 6 clips, 3 per fold
    shutil.rmtree(tmp_path / "gone" / "clips")
    # a worker process, as by default: its failure used to come back as a worker traceback
    line = error_line(finetune(gone, tmp_path / "run", "--set", "data.workers=1"))
    first = tmp_path / "gone" / "clips" / "c0_01.mp4"
    assert (
        f"manifest {gone}: all 3 clip files of the train rows (folds other than 1) are "
        f"missing, e.g. {first}" in line
    )
    line = error_line(pretrain(gone, tmp_path / "pt"))
    assert "all 6 clip files of the pretrain rows are missing" in line


def test_random_file_as_init_or_resume_checkpoint(manifest: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    line = error_line(finetune(manifest, tmp_path / "ft", "--init", str(junk)))
    assert line == f"maedfer: error: {junk} is not a PyTorch checkpoint (torch.load cannot read it)"
    last = tmp_path / "pt" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(os.urandom(4096))
    line = error_line(pretrain(manifest, tmp_path / "pt", "--resume", "true"))
    assert f"{last} is not a PyTorch checkpoint" in line
    # a real torch file holding an object the safe loader refuses: named, never "weights_only=False"
    torch.save({"model": {}, "why": Path("x")}, junk)
    line = error_line(finetune(manifest, tmp_path / "ft", "--init", str(junk)))
    assert f"checkpoint {junk} cannot be read safely: it holds a pathlib." in line
    assert "weights_only" not in line


def _nan_from(first_epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the training loss NaN from epoch ``first_epoch`` (0-based) on, keeping its graph."""
    original = FinetuneRecipe._loss_step

    def loss_step(self, batch, epoch, micro):  # noqa: ANN001, ANN202
        loss = original(self, batch, epoch, micro)
        return loss * float("nan") if epoch >= first_epoch else loss

    monkeypatch.setattr(FinetuneRecipe, "_loss_step", loss_step)


@pytest.fixture(scope="module")
def manifest24(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 12 training clips in fold 1, batch 2: 6 steps per epoch, more than the 5 non-finite
    # steps in a row that stop a run, so the stop can come before the first checkpoint
    return make_dataset(tmp_path_factory.mktemp("nan-data"), clips_per_class=8)


def test_nonfinite_stop_before_any_checkpoint(manifest24, tmp_path, monkeypatch) -> None:
    # (a stale last.pt of an earlier run cannot be there: --resume auto resumes it or refuses,
    # --overwrite deletes it)
    out = tmp_path / "run"
    _nan_from(0, monkeypatch)
    line = error_line(finetune(manifest24, out))
    assert "the loss was not finite for 5 optimiser steps in a row (epoch 1, step 5)" in line
    assert "no checkpoint of this run was saved yet" in line and "last.pt" not in line


def test_nonfinite_stop_names_the_saved_checkpoint(manifest24, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    _nan_from(1, monkeypatch)
    line = error_line(finetune(manifest24, out, "--set", "schedule.epochs=3"))
    last = out / "checkpoints" / "last.pt"
    assert f"the last good checkpoint is {last};" in line and last.is_file()
