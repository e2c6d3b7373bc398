"""Issue 21, case 3: no traceback reaches the user; one line names the file and what to do.

Through the CLI, with the failures the libraries really raise: torch's zip writer's
``RuntimeError`` when the disk fills during the fine-tuning checkpoint save (the previous
checkpoint survives, no temporary is named or left), safetensors' ``SafetensorError`` during an
export, an ``OSError`` inside a data loader worker, a worker killed, and an unexpected error
(a bug: one line naming the file that keeps its traceback).
"""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import one_line
from maedfer.training import checkpoint as ckpt_io
from tests.inference.media import save_tiny_checkpoint
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset, one_thread

runner = CliRunner()
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("one-line"), clips_per_class=4)


def _finetune(manifest: Path, out: Path, epochs: int = 2, workers: int = 0):
    return runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(manifest),
            "--fold",
            "1",
            "--out",
            str(out),
            *cli_sets(
                {
                    **TINY_FINETUNE_KEYS,
                    "schedule.epochs": epochs,
                    "data.batch_size": 2,
                    "data.workers": workers,
                    "loss.mixup": 0,
                    "loss.cutmix": 0,
                }
            ),
        ],
    )


def _line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    shown = [line.split("\r")[-1] for line in result.output.split("\n")]
    shown = [line for line in shown if line.strip() and "maedfer:" in line]
    assert len(shown) == 1 and shown[0].startswith("maedfer: error: "), result.output
    assert ".tmp" not in shown[0] and ".partial-" not in shown[0]  # never a temporary's name
    return shown[0]


@pytest.mark.usefixtures(one_thread.__name__)
def test_full_disk_during_the_checkpoint_save(manifest: Path, tmp_path: Path, monkeypatch) -> None:
    real_save, calls = torch.save, []

    def save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's checkpoint meets a full disk
            handle.write(b"PK\x03\x04 a few bytes")
            raise RuntimeError(TORCH_FULL)
        return real_save(obj, handle, *args, **kwargs)

    Usage = namedtuple("Usage", "total used free")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(ckpt_io.torch, "save", save)
    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda p: Usage(1 << 30, 1 << 30, 0) if len(calls) >= 2 else real_usage(p),
    )
    out = tmp_path / "run"
    line = _line(_finetune(manifest, out))
    last = out / "checkpoints" / "last.pt"
    assert line == (
        f"maedfer: error: cannot write {last}: No space left on device; free space "
        "on that disk (or choose another folder), then run the same command again: "
        "finished work is kept"
    )
    assert ckpt_io.load_checkpoint(last)["epoch"] == 1  # the previous checkpoint survives
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temporary left


def test_full_disk_during_a_safetensors_export(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    ckpt = save_tiny_checkpoint(tmp_path / "last.pt")
    out = tmp_path / "exported"
    line = _line(
        runner.invoke(app, ["export", str(ckpt), "--format", "safetensors", "--out", str(out)])
    )
    assert line.startswith(
        f"maedfer: error: cannot write {out / 'model.safetensors'}: No space "
        "left on device; free space on that disk"
    )
    assert not out.exists() and not list(tmp_path.glob(".exported*partial*"))


@pytest.mark.usefixtures(one_thread.__name__)
def test_an_io_error_inside_a_loader_worker(manifest: Path, tmp_path: Path, monkeypatch) -> None:
    from maedfer.pipelines import pyav

    def lost_disk(self, i):  # runs in the forked worker process
        raise OSError(errno.EIO, "Input/output error", "/mnt/clips/c0_00.mp4")

    monkeypatch.setattr(pyav.ClipDataset, "__getitem__", lost_disk)
    line = _line(_finetune(manifest, tmp_path / "run", workers=1))
    assert line == (
        "maedfer: error: [Errno 5] Input/output error: '/mnt/clips/c0_00.mp4'; check "
        "that disk and folder, then run the same command again: finished work is "
        "kept"
    )


def test_worker_deaths_and_writer_errors_are_worded_once() -> None:
    killed = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    assert one_line(killed).startswith(
        "a data loader worker process (pid 4242) was killed "
        "(Killed), most likely out of memory: lower data.workers"
    )
    gone = RuntimeError("DataLoader worker (pid(s) 11, 12) exited unexpectedly")
    assert "(pid 11, 12) exited unexpectedly" in one_line(gone)
    caught = RuntimeError(
        "Caught BadClipError in DataLoader worker process 0.\nOriginal "
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "maedfer.pipelines.backend.BadClipError: /c/a.mp4: no such file\n"
    )
    assert one_line(caught) == "/c/a.mp4: no such file"
    assert one_line(ValueError("a bug")) is None


def test_an_unexpected_error_is_one_line_with_its_traceback_kept(
    tmp_path: Path, monkeypatch
) -> None:
    from maedfer.inference import export

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(export, "load_classifier", bug)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    ckpt = save_tiny_checkpoint(tmp_path / "last.pt")
    line = _line(
        runner.invoke(app, ["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "x")])
    )
    assert line.startswith(
        "maedfer: error: unexpected ZeroDivisionError: division by zero; "
        f"the traceback is in {tmp_path}/maedfer-error-"
    )
    kept = Path(line.split("the traceback is in ")[1].split(" (please")[0])
    assert "Traceback" in kept.read_text() and "def bug" not in line
