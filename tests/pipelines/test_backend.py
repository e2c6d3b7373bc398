"""The backend contract: one table drives resolve_backend, the configs' and the CLI's choices;
an option a backend cannot honour is refused in one line; a new backend is a module and a row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from maedfer.pipelines import backend, build_loader
from maedfer.pipelines.loader import resolve_backend
from maedfer.recipes import config as config_io
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, cli_sets, make_dataset

runner = CliRunner()
ROW = backend.BackendEntry(
    "norand",
    "tests.pipelines.no_rand_augment_backend",
    "PyAV without RandAugment (tests)",
    requires="av",
)


@pytest.fixture
def third_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backend.BACKENDS, ROW.name, ROW)


def test_every_row_implements_the_contract() -> None:
    assert backend.choices() == ("auto", *backend.BACKENDS)
    for name in backend.BACKENDS:
        if not backend.installed(name):
            continue
        chosen = backend.load(name)
        assert chosen.name == name and chosen.default_workers() >= 1
        for method in ("unsupported", "epoch", "decodes"):
            assert callable(getattr(chosen, method))


def test_the_table_drives_the_config_and_cli_choices() -> None:
    with pytest.raises(MaedferError) as info:
        config_io.load(recipe="finetune", overrides=["data.backend=nonsense"])
    assert str(info.value) == (
        "data.backend ('nonsense') must be one of " + ", ".join(backend.choices())
    )
    result = runner.invoke(app, ["finetune", "--set", "data.backend=nonsense"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maedfer: error: data.backend")
    assert all(name in lines[0] for name in backend.BACKENDS)
    result = runner.invoke(app, ["profile", "data", "--backend", "nonsense"])
    assert result.exit_code == 2 and all(name in result.output for name in backend.BACKENDS)
    with pytest.raises(MaedferError, match="expected one of auto, dali, hybrid, pyav"):
        resolve_backend("nonsense", None)


def test_a_third_backend_is_a_module_and_a_row(
    third_backend: None, h264_clips: tuple[Path, pd.DataFrame]
) -> None:
    folder, _ = h264_clips
    assert (
        "norand"
        in config_io.load(recipe="finetune", overrides=["data.backend=norand"]).data.backend
    )
    loader = build_loader(
        folder / "manifest.parquet",
        mode="train",
        batch_size=2,
        size=16,
        backend="norand",
        workers=0,
        rand_augment=False,
    )
    assert loader.backend == "norand" and len([b for b in loader]) == 3
    with pytest.raises(MaedferError) as info:
        build_loader(
            folder / "manifest.parquet",
            mode="train",
            batch_size=2,
            size=16,
            backend="norand",
            workers=0,
        )
    message = str(info.value)
    assert "backend norand cannot honour rand_augment" in message and "\n" not in message


def test_a_recipe_option_a_backend_cannot_honour_fails_in_one_line(
    third_backend: None, tmp_path: Path
) -> None:
    manifest = make_dataset(tmp_path / "data")
    args = [
        "finetune",
        "--data",
        str(manifest),
        "--fold",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--dry-run",
        *cli_sets(
            {
                **TINY_FINETUNE_KEYS,
                "data.batch_size": 4,
                "data.workers": 0,
                "data.backend": "norand",
            }
        ),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("maedfer: error: backend norand cannot honour rand_augment")
    # the same recipe without the option runs on that backend: nothing else was refused
    result = runner.invoke(app, [*args, "--set", "data.rand_augment=null"])
    assert result.exit_code == 0, result.output


def test_faults_are_counted_per_epoch_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    faults = backend.Faults()
    for _ in range(2):
        faults.start_epoch()
        faults.note(0, "a.mp4", "bad")
        faults.note(0, "a.mp4", "failed to decode earlier")
        faults.note(3, "a.mp4", "failed to decode earlier")
        assert faults.count == 2 and faults.known_bad == {"a.mp4"}
    assert sum("faulty clip replaced" in r.getMessage() for r in caplog.records) == 1
