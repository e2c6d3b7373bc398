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
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from maedfer.train import config as config_io
from maedfer.train import finetune, loop, pretrain
from maedfer.train.distributed import all_reduce_sum, gather_objects, init_distributed
from maedfer.train.pretrain import PretrainRecipe
from tests.train.clipdata import TINY_FINETUNE_KEYS, TINY_PRETRAIN_KEYS, make_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

COMMON = {"schedule.epochs": 1, "data.workers": 0, "run.log_every": 1, "optim.lr": 1e-3,
          "schedule.warmup_epochs": 0}
PRETRAIN = {**TINY_PRETRAIN_KEYS, **COMMON}
FINETUNE = {**TINY_FINETUNE_KEYS, **COMMON, "model.drop_path": 0.0, "loss.mixup": 0.0,
            "loss.cutmix": 0.0}


def _pretrain(manifest: Path, out: Path, batch_size: int) -> None:
    pretrain.run(overrides={**PRETRAIN, "data.batch_size": batch_size}, data=manifest, out=out,
                 quiet=True)


def _finetune(manifest: Path, out: Path, batch_size: int) -> None:
    finetune.run(overrides={**FINETUNE, "data.batch_size": batch_size}, data=manifest, fold=1,
                 out=out, quiet=True)


def _free_ports() -> tuple[int, int]:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def _video() -> torch.Tensor:
    return torch.randn(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))


def _one_step_grads(manifest: Path, out: Path) -> dict[str, torch.Tensor]:
    """Gradients of one pre-training micro-step over this rank's share of a fixed batch."""
    cfg = config_io.load(recipe="pretrain", overrides={
        **TINY_PRETRAIN_KEYS, "data.manifest": str(manifest), "run.out": str(out),
        "run.precision": "fp32"})
    recipe = PretrainRecipe(cfg)
    recipe._env, recipe._precision = init_distributed("cpu"), "fp32"
    torch.manual_seed(0)
    env = recipe._env
    recipe._raw, recipe._model = loop.place_model(recipe._setup_model(), env, None, out)
    recipe._loss_step({"video": _video()[env.rank :: env.world_size]}, 0, 0).backward()
    return {n: p.grad.clone() for n, p in recipe._raw.named_parameters()}


def _worker(rank: int, ports: tuple[int, int], manifest: Path, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))
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
