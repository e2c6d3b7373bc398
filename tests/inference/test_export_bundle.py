"""Issue 21, case 4: an export is one bundle, swapped in whole after its checks.

The repro: an export killed after ``model.onnx`` was replaced left a 3-class model beside the
old 5-class ``inference.json``. Here a second export (3 classes) is SIGKILLed while its new
model is on disk: the folder still holds the first export, whole; a failed onnxruntime check
leaves the previous export too; the next export removes what the killed one left.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from tests.inference.media import save_tiny_checkpoint

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
FIVE = ["a", "b", "c", "d", "e"]
THREE = ["x", "y", "z"]
# A export whose onnxruntime check stalls, so that it can be killed with its model written.
STALLED = """
import sys, time
from maedfer.inference import export
export.check_onnx = lambda *a, **k: (print("checking", flush=True), time.sleep(120))
from maedfer.cli import main
sys.argv = ["maedfer", "export", sys.argv[1], "--format", "onnx", "--out", sys.argv[2]]
main()
"""


def _outputs(out: Path) -> int:
    model = onnx.load(str(out / "model.onnx"))
    return model.graph.output[0].type.tensor_type.shape.dim[1].dim_value


def _export(ckpt: Path, out: Path, code: int = 0, form: str = "onnx"):
    result = runner.invoke(app, ["export", str(ckpt), "--format", form, "--out", str(out)])
    assert result.exit_code == code, result.output
    return result


def _consistent(out: Path, classes: list[str]) -> None:
    info = json.loads((out / "inference.json").read_text())
    assert info["class_names"] == classes and _outputs(out) == len(classes)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bundle")
    return (
        save_tiny_checkpoint(folder / "five.pt", classes=FIVE),
        save_tiny_checkpoint(folder / "three.pt", classes=THREE),
    )


def test_a_killed_export_leaves_the_previous_one_whole(checkpoints, tmp_path: Path) -> None:
    five, three = checkpoints
    out = tmp_path / "exported"
    _export(five, out)
    _consistent(out, FIVE)
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED, str(three), str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "checking", proc.stderr.read()
        partial = list(tmp_path.glob(".exported.partial-*"))
        assert len(partial) == 1 and (partial[0] / "model.onnx").is_file()  # the new model
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    _consistent(out, FIVE)  # untouched: the old model beside its own inference.json
    assert sorted(p.name for p in out.iterdir()) == ["inference.json", "model.onnx"]
    time.sleep(0.1)
    _export(three, out)  # a new export clears what the killed one left, then replaces it whole
    _consistent(out, THREE)
    assert not [
        p
        for p in tmp_path.iterdir()
        if p.name.startswith(".exported.") and not p.name.endswith(".lock")
    ]


def test_a_failed_check_keeps_the_previous_export(checkpoints, tmp_path: Path, monkeypatch) -> None:
    from maedfer.inference import export

    five, three = checkpoints
    out = tmp_path / "exported"
    _export(five, out)

    def differs(path, *args, **kwargs):
        assert path.parent != out  # checked where it was written, before any swap
        raise MaedferError(
            f"the ONNX model's logits differ from PyTorch's by 1e-2; {path} is not usable"
        )

    monkeypatch.setattr(export, "check_onnx", differs)
    result = _export(three, out, code=1)
    assert "logits differ" in result.output
    _consistent(out, FIVE)
    assert not list(tmp_path.glob(".exported.partial-*"))


def test_an_export_folder_holds_an_export_only(checkpoints, tmp_path: Path) -> None:
    five, _ = checkpoints
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = _export(five, out, code=1, form="safetensors")
    assert "holds files an export does not write (notes.txt)" in result.output
    assert (out / "notes.txt").read_text() == "keep me"
    _export(five, tmp_path / "st", form="safetensors")
    (tmp_path / ".st.partial-stale").mkdir()  # what a killed export left
    _export(five, tmp_path / "st", form="safetensors")  # replaced whole, the leftover removed
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == [
        "config.json",
        "inference.json",
        "model.safetensors",
    ]
    assert not (tmp_path / ".st.partial-stale").exists()
