"""torchrun-style DDP on CPU with 2 gloo processes (issue 5 §5).

Two processes with batch b must do what one process with batch 2b does: the loader shards the
global batch by rank, the MAE masks are drawn for the global batch and sliced by rank, DDP
averages the gradients, metrics are reduced and rank 0 alone writes. Checked for one gradient
(pre-training step), for a whole pre-training epoch and for a fine-tuning epoch plus its test.
Tolerances: gradients and losses are the same sums in another order (float32, ~1e-7 relative);
AdamW's first steps are nearly sign(g)·lr, so weights agree to a few 1e-6 at lr 1e-3.
"""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.recipes import config as config_io
from maedfer.recipes import finetune, pretrain
from maedfer.recipes.pretrain import PretrainRecipe
from maedfer.training import distributed, setup
from maedfer.training.distributed import all_reduce_sum, gather_objects, init_distributed
from tests.recipes.clipdata import TINY_FINETUNE_KEYS, TINY_PRETRAIN_KEYS, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

COMMON = {
    "schedule.epochs": 1,
    "data.workers": 0,
    "run.log_every": 1,
    "optim.lr": 1e-3,
    "schedule.warmup_epochs": 0,
}
PRETRAIN = {**TINY_PRETRAIN_KEYS, **COMMON}
FINETUNE = {
    **TINY_FINETUNE_KEYS,
    **COMMON,
    "model.drop_path": 0.0,
    "loss.mixup": 0.0,
    "loss.cutmix": 0.0,
}


def _pretrain(manifest: Path, out: Path, batch_size: int) -> None:
    pretrain.run(overrides={**PRETRAIN, "data.batch_size": batch_size}, data=manifest, out=out)


def _finetune(manifest: Path, out: Path, batch_size: int) -> None:
    finetune.run(
        overrides={**FINETUNE, "data.batch_size": batch_size}, data=manifest, fold=1, out=out
    )


def _free_ports() -> tuple[int, int]:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def _video() -> torch.Tensor:
    return torch.randn(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))


def _one_step_grads(manifest: Path, out: Path) -> dict[str, torch.Tensor]:
    """Gradients of one pre-training micro-step over this rank's share of a fixed batch."""
    cfg = config_io.load(
        recipe="pretrain",
        overrides={
            **TINY_PRETRAIN_KEYS,
            "data.manifest": str(manifest),
            "run.out": str(out),
            "run.precision": "fp32",
        },
    )
    recipe = PretrainRecipe(cfg)
    recipe._env, recipe._precision = init_distributed("cpu"), "fp32"
    torch.manual_seed(0)
    env = recipe._env
    recipe._raw, recipe._model = setup.place_model(recipe._setup_model(), env, None, out)
    recipe._loss_step({"video": _video()[env.rank :: env.world_size]}, 0, 0).backward()
    return {n: p.grad.clone() for n, p in recipe._raw.named_parameters()}


def _worker(rank: int, ports: tuple[int, int], manifest: Path, out: Path) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(ports[0]),
    )
    torch.set_num_threads(1)
    grads = _one_step_grads(manifest, out / "grad")
    env = init_distributed("cpu")
    helpers = (all_reduce_sum([rank + 1.0], env), gather_objects(f"r{rank}", env))
    if rank == 0:
        torch.save({"grads": grads, "sum": helpers[0], "gathered": helpers[1]}, out / "step.pt")
    _pretrain(manifest, out / "pretrain", 2)
    # each run leaves its process group at the end (as a torchrun launch would): a new one
    os.environ["MASTER_PORT"] = str(ports[1])
    _finetune(manifest, out / "finetune", 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    manifest = make_dataset(root / "data")
    (root / "ddp").mkdir()
    mp.spawn(_worker, args=(_free_ports(), manifest, root / "ddp"), nprocs=2, join=True)
    os.environ.pop("WORLD_SIZE", None)
    _pretrain(manifest, root / "single" / "pretrain", 4)
    _finetune(manifest, root / "single" / "finetune", 4)
    return root


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_process_gradients_match_one_process(runs: Path) -> None:
    ddp = torch.load(runs / "ddp" / "step.pt", weights_only=True)
    assert ddp["sum"] == [3.0] and ddp["gathered"] == ["r0", "r1"]
    single = _one_step_grads(runs / "data" / "manifest.parquet", runs / "single" / "grad")
    assert set(single) == set(ddp["grads"])
    for name, grad in single.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("recipe", ["pretrain", "finetune"])
def test_two_process_epoch_matches_one_process(runs: Path, recipe: str) -> None:
    ddp, single = runs / "ddp" / recipe, runs / "single" / recipe
    assert len(_losses(ddp)) == len(_losses(single)) == (6 if recipe == "pretrain" else 3)
    torch.testing.assert_close(_losses(ddp), _losses(single), rtol=1e-4, atol=0)
    a, b = _weights(ddp), _weights(single)
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2e-5, msg=name)
    assert not list(ddp.glob("**/*.tmp"))  # rank 0 alone wrote, atomically


def test_two_process_test_phase_gathers_every_clip(runs: Path) -> None:
    ddp = json.loads((runs / "ddp" / "finetune" / "report.json").read_text())
    single = json.loads((runs / "single" / "finetune" / "report.json").read_text())
    assert ddp["num_clips"] == single["num_clips"] == 12
    assert ddp["confusion_matrix"] == single["confusion_matrix"]


# ---------------------------------------------------------------- Slurm (srun without torchrun)

LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture()
def clean_environ():
    """os.environ without torchrun's or Slurm's variables, restored whole afterwards."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key in LAUNCH_KEYS or key.startswith("SLURM_"):
            del os.environ[key]
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node07", "node07"),
        ("node07,node09", "node07"),
        ("gpu[01-04,07]", "gpu01"),
        ("gpu[07,01-04]", "gpu07"),  # Slurm's order, not sorted
        ("gpu[3-4],cpu[1-2]", "gpu3"),
        ("rack[1-2]-n[003,005]", "rack1-n003"),
        ("a-[10-11].cluster", "a-10.cluster"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist: str, first: str) -> None:
    assert distributed.first_host(nodelist) == first


def test_unreadable_node_list_is_refused() -> None:
    with pytest.raises(MaedferError, match="cannot read the Slurm node list"):
        distributed.first_host("gpu[01-04")


SLURM_STEP = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_NODELIST": "gpu[03-06]",
    "SLURM_JOB_NODELIST": "gpu[01-06]",
}


def test_slurm_variables_become_torchrun_ones(monkeypatch) -> None:
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)  # no scontrol here
    assert distributed.slurm_launch(SLURM_STEP) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu03",
        "MASTER_PORT": str(29500 + 456),
    }
    given = {**SLURM_STEP, "MASTER_ADDR": "head", "MASTER_PORT": "4000"}
    assert distributed.slurm_launch(given)["MASTER_ADDR"] == "head"
    assert distributed.slurm_launch(given)["MASTER_PORT"] == "4000"
    no_step_list = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
    assert distributed.slurm_launch(no_step_list)["MASTER_ADDR"] == "gpu01"  # the job's list


def test_scontrol_names_the_master_where_it_exists(monkeypatch) -> None:
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="gpu03\ngpu04\n", stderr="")

    monkeypatch.setattr(distributed.shutil, "which", lambda name: "/usr/bin/scontrol")
    monkeypatch.setattr(distributed.subprocess, "run", fake_run)
    assert distributed.slurm_launch(SLURM_STEP)["MASTER_ADDR"] == "gpu03"
    assert calls == [["scontrol", "show", "hostnames", "gpu[03-06]"]]


@pytest.mark.parametrize(
    "environ",
    [
        {},  # not under Slurm
        {**SLURM_STEP, "WORLD_SIZE": "4"},  # torchrun inside an allocation: torchrun's win
        {**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "1"},  # srun -n 1
    ],
)
def test_no_slurm_launch(environ: dict) -> None:
    assert distributed.slurm_launch(environ) is None


def test_batch_script_of_several_tasks_runs_as_one_process(caplog) -> None:
    # sbatch --ntasks=8 running maedfer in the script itself: no srun, no other task will come
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP_")}
    with caplog.at_level("INFO", logger="maedfer.training.distributed"):
        assert distributed.slurm_launch({**batch, "SLURM_PROCID": "0"}) is None
    assert "not started by srun" in caplog.text


def test_incomplete_slurm_step_is_refused() -> None:
    with pytest.raises(MaedferError, match="without SLURM_STEP_NODELIST"):
        distributed.slurm_launch({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"})
    with pytest.raises(MaedferError, match="cannot read Slurm's task numbers"):
        distributed.slurm_launch({"SLURM_PROCID": "x", "SLURM_STEP_NUM_TASKS": "2"})


def test_init_distributed_joins_from_slurm_variables(clean_environ, monkeypatch) -> None:
    joined = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist,
        "init_process_group",
        lambda **kw: joined.append({**kw, **{k: os.environ[k] for k in LAUNCH_KEYS}}),
    )
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    clean_environ.update({**SLURM_STEP, "MASTER_PORT": "4001"})
    env = init_distributed("cpu")
    assert (env.rank, env.world_size, env.local_rank) == (5, 8, 1)
    assert joined == [
        {
            "backend": "gloo",
            "device_id": None,
            "RANK": "5",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "gpu03",
            "MASTER_PORT": "4001",
        }
    ]


def _slurm_worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_NTASKS="2",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_JOB_ID="1",
        SLURM_STEP_NODELIST="localhost",
        MASTER_PORT=str(port),
    )
    env = init_distributed("cpu")
    total = all_reduce_sum([rank + 1.0], env)
    torch.save({"rank": env.rank, "world": env.world_size, "sum": total}, out / f"{rank}.pt")
    distributed.cleanup(env)


def test_two_slurm_tasks_join_one_group(tmp_path: Path, clean_environ) -> None:
    mp.spawn(_slurm_worker, args=(_free_ports()[0], tmp_path), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    assert [(g["rank"], g["world"], g["sum"]) for g in got] == [(0, 2, [3.0]), (1, 2, [3.0])]


@pytest.mark.parametrize(("count", "local_rank", "index"), [(8, 3, 3), (1, 3, 0), (4, 0, 0)])
def test_cuda_device_of_a_local_rank(monkeypatch, count: int, local_rank: int, index: int):
    # srun --gpus-per-task=1 shows each task one GPU, whatever its local rank
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert resolve_device("cuda", local_rank) == torch.device("cuda", index)


def test_more_local_ranks_than_gpus_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(MaedferError, match="local rank 5 needs a CUDA device .* sees 4"):
        resolve_device("cuda", 5)
