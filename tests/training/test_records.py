"""What a run folder records: config.yaml, env.json, TensorBoard events
(maedfer.training.records)."""

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from maedfer.config import read_yaml
from maedfer.errors import MaedferError
from maedfer.training import records
from maedfer.training.runtime import MetricsLog

CONFIG = {
    "recipe": "finetune",
    "data": {"manifest": Path("/data/dfew/manifest.parquet"), "fold": 1, "backend": "pyav"},
    "optim": {"lr": 1.25e-4, "betas": (0.9, 0.999), "clip_grad": None},
    "schedule": {"epochs": 100, "warmup_epochs": 5.0},
    "run": {"precision": "bf16", "world_size": 2, "total_batch": 64},
}


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_config_yaml_round_trips_in_order(tmp_path: Path) -> None:
    path = records.write_config_yaml(tmp_path / "run", CONFIG, header="replay: maedfer x")
    text = path.read_text()
    assert text.startswith("# replay: maedfer x\nrecipe: finetune\ndata:\n")
    loaded = read_yaml(path)
    assert list(loaded) == list(CONFIG)  # the recipe's order, not sorted
    assert loaded["data"]["manifest"] == "/data/dfew/manifest.parquet"
    assert loaded["optim"] == {"lr": 1.25e-4, "betas": [0.9, 0.999], "clip_grad": None}
    assert loaded["schedule"]["warmup_epochs"] == 5.0  # floats stay floats
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # atomic: no temporary


def test_config_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(MaedferError, match=r"bad.yaml is not valid YAML \(line \d+\)"):
        read_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(MaedferError, match="holds a list; expected a mapping"):
        read_yaml(bad)
    with pytest.raises(MaedferError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")


def test_environment_names_versions_commit_and_devices() -> None:
    env = records.environment(world_size=4)
    assert env["maedfer"]["version"] == records.maedfer.__version__
    git = env["maedfer"]["git"]  # the tests run from a checkout
    assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    packages = env["packages"]
    assert set(packages) >= {"torch", "timm", "numpy", "pyav", "dali", "tensorboard"}
    assert packages["torch"] == records.torch.__version__ and packages["numpy"]
    assert set(env["cuda"]) == {"version", "available", "cudnn"}
    assert isinstance(env["devices"], list) and env["world_size"] == 4
    json.dumps(env)  # JSON as it is


def test_git_state_is_none_outside_a_checkout(tmp_path: Path, monkeypatch) -> None:
    assert records.git_state(tmp_path) is None  # a wheel's site-packages: no .git there
    # git missing or failing: never an error
    monkeypatch.setenv("PATH", str(tmp_path))
    assert records.git_state() is None


def test_env_json_keeps_earlier_starts(tmp_path: Path) -> None:
    first = records.write_env_json(tmp_path, {"backend": "pyav"}, world_size=2)
    assert json.loads(first.read_text())["backend"] == "pyav"
    records.write_env_json(tmp_path, {"backend": "dali"}, world_size=1)
    records.write_env_json(tmp_path, {"backend": "dali", "resumed_at_step": 9})
    env = json.loads(first.read_text())
    assert env["resumed_at_step"] == 9
    assert [e["backend"] for e in env["previous"]] == ["pyav", "dali"]
    assert [e["world_size"] for e in env["previous"]] == [2, 1]
    assert all("previous" not in e for e in env["previous"])


RECORDS = [
    {
        "kind": "train",
        "epoch": 1,
        "step": 1,
        "loss": 2.0,
        "lr": 1e-4,
        "clips_per_s": 50.0,
        "grad_norm": None,
        "nonfinite_steps": 0,
    },
    {
        "kind": "train",
        "epoch": 1,
        "step": 2,
        "loss": 1.5,
        "lr": 2e-4,
        "clips_per_s": 60.0,
        "grad_norm": float("nan"),
        "nonfinite_steps": 0,
    },
    {"kind": "epoch", "epoch": 1, "step": 2, "loss": 1.75, "time_s": 3.0},
    {"kind": "test", "epoch": 1, "step": 2, "uar": 0.5, "war": 0.625, "final": True},
]


def test_tensorboard_events_hold_the_metrics_scalars(tmp_path: Path) -> None:
    with records.TensorBoardLog(tmp_path) as tb:
        assert tb.active
        for record in RECORDS:
            tb.write(record)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = _events(tmp_path / "tb")
    assert events["train/loss"] == [(1, 2.0), (2, 1.5)]
    assert [s for s, _ in events["train/lr"]] == [1, 2]
    assert events["train/clips_per_s"] == [(1, 50.0), (2, 60.0)]
    assert events["epoch/loss"] == [(2, 1.75)]
    assert events["test/uar"] == [(2, 0.5)] and events["test/war"] == [(2, 0.625)]
    assert "train/grad_norm" not in events  # None and NaN are skipped
    assert not any(t.endswith(("/epoch", "/step", "/final", "/kind")) for t in events)


def test_metrics_log_mirrors_records_and_a_resume_purges_later_events(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl", mirrors=[records.TensorBoardLog(tmp_path)])
    for step in (1, 2, 3, 4):
        log.write({"kind": "train", "step": step, "loss": float(step)})
    log.close()
    # resumed from a checkpoint at step 2: steps 3 and 4 are written again
    log = MetricsLog(
        tmp_path / "metrics.jsonl", mirrors=[records.TensorBoardLog(tmp_path, purge_step=3)]
    )
    log.truncate_after(2)
    for step in (3, 4):
        log.write({"kind": "train", "step": step, "loss": 10.0 * step})
    log.close()
    assert [r["loss"] for r in log.records()] == [1.0, 2.0, 30.0, 40.0]
    assert _events(tmp_path / "tb")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_a_resume_in_the_same_second_still_purges(tmp_path: Path) -> None:
    """TensorBoard reads event files in name order (second, host, pid, then a counter compared
    as text): a resumed writer created in the second of the file it purges, whose counter sorts
    first ("12" before "99999"), waits for the next second instead of purging nothing."""
    import time

    log = MetricsLog(tmp_path / "metrics.jsonl", mirrors=[records.TensorBoardLog(tmp_path)])
    for step in (1, 2, 3, 4):
        log.write({"kind": "train", "step": step, "loss": float(step)})
    log.close()
    (first,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    parts = first.name.split(".")
    parts[3], parts[-1] = str(int(time.time())), "99999"
    first.rename(first.with_name(".".join(parts)))
    log = MetricsLog(
        tmp_path / "metrics.jsonl", mirrors=[records.TensorBoardLog(tmp_path, purge_step=3)]
    )
    log.truncate_after(2)
    for step in (3, 4):
        log.write({"kind": "train", "step": step, "loss": 10.0 * step})
    log.close()
    assert _events(tmp_path / "tb")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_tensorboard_is_a_no_op_without_the_package(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(records, "_said_missing", False)
    with caplog.at_level(logging.INFO, logger="maedfer.training.records"):
        first, second = records.TensorBoardLog(tmp_path), records.TensorBoardLog(tmp_path)
    first.write(RECORDS[0])
    first.close()
    assert not first.active and not second.active and not (tmp_path / "tb").exists()
    said = [r for r in caplog.records if "tensorboard is not installed" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO


def test_disabled_tensorboard_writes_nothing(tmp_path: Path) -> None:
    tb = records.TensorBoardLog(tmp_path, enabled=False)  # ranks other than 0
    tb.write(RECORDS[0])
    tb.close()
    assert not tb.active and not (tmp_path / "tb").exists()
