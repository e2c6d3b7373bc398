"""Issue 21, case 3 (the third repro): training clips missing or undecodable.

A faulty training clip is replaced by another sample and counted (``report.json``
``bad_train_clips``, the summary, ``RUN/bad_clips.json``); past ``data.max_bad_share``
(default 1 %) the run stops in one line that names the list. The repro: half the training
clips missing used to end in a DataLoader worker traceback after a warning per clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()


def _finetune(data: Path, out: Path, workers: int, **keys):  # noqa: ANN202 (a click Result)
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
                    "schedule.epochs": 1,
                    "data.batch_size": 2,
                    "data.workers": workers,
                    "loss.mixup": 0,
                    "loss.cutmix": 0,
                    **keys,
                }
            ),
        ],
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_half_the_training_clips_missing_stops_in_one_line(tmp_path: Path, workers: int) -> None:
    manifest = make_dataset(tmp_path / "data", clips_per_class=4)  # fold 2 = 6 training clips
    gone = ["c0_01", "c1_01", "c2_01"]  # half of them
    for clip_id in gone:
        (tmp_path / "data" / "clips" / f"{clip_id}.mp4").unlink()
    out = tmp_path / "run"
    result = _finetune(manifest, out, workers)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line.split("\r")[-1] for line in result.output.splitlines()]
    errors = [line for line in lines if line.startswith("maedfer:")]
    assert len(errors) == 1 and errors[0].startswith("maedfer: error: "), result.output
    assert "of 6 training clips are missing or undecodable" in errors[0]
    assert "more than data.max_bad_share 1.0%" in errors[0]
    assert f"all are listed in {out / 'bad_clips.json'}" in errors[0]
    listed = json.loads((out / "bad_clips.json").read_text())
    assert listed["stopped"] is True and listed["train_clips"] == 6
    assert set(listed["clips"]) <= {str(tmp_path / "data" / "clips" / f"{c}.mp4") for c in gone}
    assert listed["bad_clips"] == len(listed["clips"]) >= 1
    warnings = [line for line in lines if "faulty clip replaced" in line]
    assert len(warnings) <= len(gone)  # not a line per sample


def test_a_tolerated_bad_clip_is_replaced_and_counted(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", clips_per_class=4)
    (tmp_path / "data" / "clips" / "c1_01.mp4").write_bytes(b"not a video")
    out = tmp_path / "run"
    result = _finetune(manifest, out, 0, **{"data.max_bad_share": 0.5})
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["bad_train_clips"] == 1 and report["complete"] is True
    listed_in = out / "bad_clips.json"
    assert (
        f"faulty training clips: 1 replaced by other samples (listed in {listed_in})"
        in result.stdout
    )
    listed = json.loads((out / "bad_clips.json").read_text())
    assert list(listed["clips"]) == [str(tmp_path / "data" / "clips" / "c1_01.mp4")]
    assert listed["stopped"] is False and listed["max_bad_share"] == 0.5
