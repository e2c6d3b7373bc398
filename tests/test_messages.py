"""Issue 21, case 7: messages that say what is true.

Each repro of the issue through the CLI: a label of -3 is called -3; an empty manifest is
called empty; a file symlinked into the raw folder is inside it (tests/preprocess/test_paths);
a resumed ``prepare`` rates only the clips it judged and says which rejects it carried over;
a failed write without a file name says where it was writing; ``--set optim.blr`` is not
silently ignored; ``--set 'model.overrides={...}'`` sets those entries only; a missing
``--fold`` is asked for, not printed as ``(None)``; Ctrl-C is noticed once, not once per
loader worker.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.manifests import write_manifest
from tests.preprocess.test_orphans import _descendants
from tests.preprocess.test_reliability import STEMS, _tree
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset, one_thread

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
FINETUNE_KEYS = {
    **TINY_FINETUNE_KEYS,
    "schedule.epochs": 1,
    "data.batch_size": 2,
    "data.workers": 0,
    "loss.mixup": 0,
    "loss.cutmix": 0,
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("messages"), clips_per_class=2)


def _line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    shown = [line.split("\r")[-1] for line in result.output.split("\n")]
    shown = [line for line in shown if line.strip() and line.startswith("maedfer:")]
    assert len(shown) == 1 and shown[0].startswith("maedfer: error: "), result.output
    return shown[0]


def _finetune(data: Path, out: Path, *extra: str, keys: dict | None = None):
    return runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(data),
            "--out",
            str(out),
            *cli_sets(keys or FINETUNE_KEYS),
            *extra,
        ],
    )


def test_a_label_of_minus_three_is_called_minus_three(manifest: Path, tmp_path: Path) -> None:
    table = pq.read_table(manifest)
    labels = table.column("label").to_pylist()
    labels[2] = -3
    bad = manifest.parent / "minus3.parquet"
    table = table.set_column(
        table.column_names.index("label"), "label", pa.array(labels, pa.int16())
    )
    pq.write_table(table.replace_schema_metadata(pq.read_schema(manifest).metadata), bad)
    line = _line(_finetune(bad, tmp_path / "run", "--fold", "1", "--dry-run"))
    clip = table.column("clip_id")[2].as_py()
    assert f"clip {clip} has label -3; labels are class indices 0..K-1, or -1" in line


def test_an_empty_manifest_is_called_empty(tmp_path: Path) -> None:
    empty = tmp_path / "manifest.parquet"
    columns = ["clip_id", "path", "label", "fold"]
    write_manifest(
        pd.DataFrame(
            {
                c: pd.Series([], dtype="int64" if c in ("label", "fold") else "object")
                for c in columns
            }
        ),
        empty,
        dataset="ravdess",
        protocol="x",
        classes=["a", "b"],
        num_folds=2,
        raw_root=tmp_path,
    )
    line = _line(_finetune(empty, tmp_path / "run", "--fold", "1", "--dry-run"))
    assert f"manifest {empty} holds no clips (0 rows)" in line and "fixed-split" not in line


def test_a_missing_fold_is_asked_for(manifest: Path, tmp_path: Path) -> None:
    line = _line(_finetune(manifest, tmp_path / "run", "--dry-run"))
    assert line == (
        "maedfer: error: ravdess is a 2-fold protocol: give --fold K (1..2), the fold to test on"
    )
    assert "None" not in line


def test_blr_is_not_silently_ignored_and_mappings_are_merged(
    manifest: Path, tmp_path: Path
) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "recipe": "finetune",
                "optim": {"lr": 1e-3},
                "model": {
                    "name": "lgi_former_tiny",
                    "overrides": {
                        "embed_dim": 32,
                        "depth": 2,
                        "num_heads": 2,
                        "region_size": [2, 2, 2],
                    },
                },
            }
        )
    )
    keys = {k: v for k, v in FINETUNE_KEYS.items() if not k.startswith("model.overrides")}
    keys.pop("model.name")
    result = _finetune(
        manifest,
        tmp_path / "run",
        "--config",
        str(config),
        "--fold",
        "1",
        "--set",
        "optim.blr=2e-3",
        "--dry-run",
        keys=keys,
    )
    line = _line(result)
    assert "--set optim.blr=0.002 would be ignored: the config sets optim.lr=0.001" in line
    assert "--set optim.lr=null" in line
    result = _finetune(
        manifest,
        tmp_path / "run",
        "--config",
        str(config),
        "--fold",
        "1",
        "--set",
        "model.overrides={num_heads: 1}",
        "--dry-run",
        "--json",
        keys=keys,
    )
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout[result.stdout.index("{") :])
    assert described["config"]["model"]["overrides"] == {
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 1,
        "region_size": [2, 2, 2],
    }
    result = _finetune(
        manifest,
        tmp_path / "run",
        "--config",
        str(config),
        "--fold",
        "1",
        "--set",
        "model.overrides.depth=null",
        "--dry-run",
        "--json",
        keys=keys,
    )
    described = json.loads(result.stdout[result.stdout.index("{") :])
    assert "depth" not in described["config"]["model"]["overrides"]


def test_a_resumed_prepare_rates_what_it_did_and_says_what_it_carried(
    tmp_path: Path, portraits
) -> None:
    raw = _tree(tmp_path, portraits, STEMS[:3])
    (raw / "Actor_01" / f"{STEMS[2]}.mp4").write_bytes(b"")  # a reject: empty file
    args = ["prepare", "ravdess", "--raw", str(raw), "--out", str(tmp_path / "out"), "--size", "64"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "carried over" not in first.stdout and "clips/s" in first.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    head = again.stdout.splitlines()[0]
    assert "2 clips ok, 1 rejected" in head and "clips/s" not in head
    assert "0 clip(s) judged by this run, the rest done earlier" in head
    assert (
        "1 of the rejects were judged by an earlier run and carried over (their files are "
        "unchanged); --retry-rejects judges them again"
    ) in again.stdout


def test_a_failed_write_without_a_file_name_says_where(
    tmp_path: Path, portraits, monkeypatch
) -> None:
    from maedfer.preprocess import driver

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(driver.Journal, "_write", full)
    raw = _tree(tmp_path, portraits, STEMS[:1])
    out = tmp_path / "out"
    line = _line(
        runner.invoke(
            app, ["prepare", "ravdess", "--raw", str(raw), "--out", str(out), "--size", "64"]
        )
    )
    assert line == (
        "maedfer: error: No space left on device; free space on that disk (or choose "
        "another folder), then run the same command again: finished work is kept "
        f"(while writing into {out})"
    )


@pytest.mark.usefixtures(one_thread.__name__)
def test_ctrl_c_is_noticed_once_not_once_per_loader_worker(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", clips_per_class=8)  # 6 steps per epoch
    out = tmp_path / "run"
    keys = {**FINETUNE_KEYS, "schedule.epochs": 500, "data.workers": 2, "run.log_every": 1}
    log = tmp_path / "run.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "maedfer.cli",
                "finetune",
                "--data",
                str(manifest),
                "--fold",
                "1",
                "--out",
                str(out),
                *cli_sets(keys),
            ],
            cwd=REPO,
            stdout=handle,
            stderr=handle,
            start_new_session=True,
        )
    deadline = time.monotonic() + 240
    while len(_descendants(proc.pid)) < 2 or not (out / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)  # until the loader's two worker processes run
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole process group, workers included
    proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 130, text
    assert text.count("SIGINT received") == 1, text
