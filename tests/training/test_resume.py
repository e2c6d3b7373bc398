"""Running into an existing run folder: fresh, resume, finished, refused, overwrite."""

from pathlib import Path

import pytest

from maedfer.errors import MaedferError
from maedfer.training import checkpoint as ckpt_io
from maedfer.training.resume import (
    RESUME_IGNORED,
    config_differences,
    decide_resume,
    flatten,
    mark_finished,
    prepare_run_dir,
)

CONFIG = {
    "data": {"manifest": "/d/m.parquet", "fold": 1},
    "optim": {"lr": 1e-3, "betas": [0.9, 0.999]},
    "schedule": {"epochs": 3},
    "run": {"device": "cuda", "workers": 8, "out": "runs/a", "log_every": 10},
}


def _config(**changes: object) -> dict:
    """CONFIG with dotted changes, e.g. ``_config(**{"optim.lr": 2e-3})``."""
    config = {k: dict(v) for k, v in CONFIG.items()}
    for key, value in changes.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def _save(run: Path, *, epoch: int, config: dict | None = None, **extra: object) -> Path:
    path = run / "checkpoints" / ckpt_io.LAST
    ckpt_io.save_checkpoint(
        path,
        {
            "format": ckpt_io.FORMAT,
            "version": ckpt_io.VERSION,
            "model_name": "m",
            "model_config": {},
            "model": {},
            "optimizer": {},
            "epoch": epoch,
            "step": 4 * epoch,
            "epoch_step": 0,
            "config": config or CONFIG,
            **extra,
        },
    )
    return path


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_flatten_to_dotted_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": (2, 3)}}, "e": Path("/x"), "f": {}}) == {
        "a.b": 1,
        "a.c.d": [2, 3],
        "e": "/x",
        "f": {},
    }


def test_differences_ignore_where_and_how_fast_a_run_goes() -> None:
    moved = _config(
        **{"run.device": "cpu", "run.workers": 2, "run.out": "/scratch/a", "run.log_every": 1}
    )
    assert config_differences(CONFIG, moved) == []
    assert {"device", "workers", "out", "resume", "log_every"} <= RESUME_IGNORED
    flat_old, flat_new = {"lr": 1e-3, "device": "cuda"}, {"lr": 2e-3, "device": "cpu"}
    assert config_differences(flat_old, flat_new) == [("lr", 1e-3, 2e-3)]  # flat configs too


def test_empty_or_missing_folder_starts_fresh(tmp_path: Path) -> None:
    for run in (tmp_path / "missing", tmp_path):
        decision = decide_resume(run, CONFIG)
        assert decision.action == "fresh" and decision.remove == ()


def test_same_recipe_resumes_with_the_loaded_checkpoint(tmp_path: Path) -> None:
    last = _save(tmp_path, epoch=1)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    for resume in ("auto", True, "true"):
        decision = decide_resume(tmp_path, _config(**{"run.workers": 0}), resume=resume)
        assert decision.action == "resume" and decision.checkpoint == last
        assert decision.state["epoch"] == 1 and "epoch 1, step 4" in decision.message


def test_other_recipe_is_refused_with_the_keys_that_differ(tmp_path: Path) -> None:
    _save(tmp_path, epoch=1)
    changed = _config(**{"optim.lr": 2e-3, "schedule.epochs": 5, "run.device": "cpu"})
    changed["optim"]["new_option"] = True
    before = _files(tmp_path)
    with pytest.raises(MaedferError) as err:
        decide_resume(tmp_path, changed)
    message = str(err.value)
    assert "\n" not in message and "another recipe" in message and "--overwrite" in message
    assert "optim.lr 0.001 -> 0.002" in message and "schedule.epochs 3 -> 5" in message
    assert "optim.new_option (absent) -> true" in message and "device" not in message
    assert _files(tmp_path) == before


def test_finished_run_is_left_untouched(tmp_path: Path) -> None:
    _save(tmp_path, epoch=3)
    (tmp_path / "report.json").write_text('{"uar": 0.5}')
    mark_finished(tmp_path, epoch=3, step=12)
    before = _files(tmp_path)
    decision = decide_resume(tmp_path, CONFIG)
    assert decision.action == "finished" and "finished run (3 epoch(s))" in decision.message
    prepare_run_dir(decision)
    assert _files(tmp_path) == before
    (tmp_path / "checkpoints" / ckpt_io.LAST).unlink()  # a user freed the space of last.pt
    assert decide_resume(tmp_path, CONFIG, resume=True).action == "finished"
    with pytest.raises(MaedferError, match="holds a finished run and --resume is false"):
        decide_resume(tmp_path, CONFIG, resume=False)


def test_finished_run_of_another_recipe_is_refused(tmp_path: Path) -> None:
    _save(tmp_path, epoch=3)
    mark_finished(tmp_path, epoch=3, step=12)
    with pytest.raises(MaedferError, match="optim.lr 0.001 -> 0.01"):
        decide_resume(tmp_path, _config(**{"optim.lr": 1e-2}))


def test_killed_after_the_last_epoch_resumes_to_write_its_report(tmp_path: Path) -> None:
    _save(tmp_path, epoch=3)  # all epochs done, no report.json, no run_state.json
    decision = decide_resume(tmp_path, CONFIG, final_outputs=("report.json",))
    assert decision.action == "resume"
    # a folder from before run_state.json: checkpoint at the end and the report there
    (tmp_path / "report.json").write_text("{}")
    assert decide_resume(tmp_path, CONFIG, final_outputs=("report.json",)).action == "finished"


def test_results_without_a_checkpoint_are_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(MaedferError, match=r"holds report.json but no checkpoints/last.pt"):
        decide_resume(tmp_path, CONFIG)


def test_start_that_never_checkpointed_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "tb").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    decision = decide_resume(tmp_path, CONFIG)
    assert decision.action == "fresh"
    prepare_run_dir(decision)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_modes(tmp_path: Path) -> None:
    with pytest.raises(MaedferError, match="--resume: no checkpoint at"):
        decide_resume(tmp_path, CONFIG, resume=True)
    _save(tmp_path, epoch=1)
    with pytest.raises(MaedferError, match=r"checkpoint at epoch 1\) and --resume is false"):
        decide_resume(tmp_path, CONFIG, resume="false")
    with pytest.raises(MaedferError, match="must be auto, true or false"):
        decide_resume(tmp_path, CONFIG, resume="maybe")
    with pytest.raises(MaedferError, match="contradict"):
        decide_resume(tmp_path, CONFIG, resume=True, overwrite=True)


def test_overwrite_deletes_the_run_files_only(tmp_path: Path) -> None:
    _save(tmp_path, epoch=3)
    ckpt_io.save_numbered(tmp_path, tmp_path / "checkpoints" / ckpt_io.LAST, 3, keep=2)
    for name in (
        "report.json",
        "predictions.parquet",
        "metrics.jsonl",
        "config.yaml",
        "env.json",
        ckpt_io.FINAL,
    ):
        (tmp_path / name).write_text("x")
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.1").write_text("x")
    mark_finished(tmp_path, epoch=3, step=12)
    (tmp_path / "notes.txt").write_text("mine")
    decision = decide_resume(tmp_path, _config(**{"optim.lr": 5.0}), overwrite=True)
    assert decision.action == "overwrite" and "deleting checkpoints" in decision.message
    prepare_run_dir(decision)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert decide_resume(tmp_path, CONFIG, overwrite=True).action == "fresh"


def test_weights_only_last_pt_cannot_be_resumed(tmp_path: Path) -> None:
    ckpt_io.save_checkpoint(
        tmp_path / "checkpoints" / ckpt_io.LAST,
        {
            "format": ckpt_io.FORMAT,
            "kind": "weights",
            "model": {},
            "epoch": 1,
            "step": 1,
        },
    )
    with pytest.raises(MaedferError, match="weights only"):
        decide_resume(tmp_path, CONFIG)


def test_damaged_run_state_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "run_state.json").write_text("{not json")
    with pytest.raises(MaedferError, match="run_state.json is not a JSON object"):
        decide_resume(tmp_path, CONFIG)
