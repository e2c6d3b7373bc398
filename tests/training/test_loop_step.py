"""The training step without host reads (losses and non-finite counts summed on the device,
read at log points; a bad step skipped on the device) against the step it replaced, which read
every loss with ``.item()``: the same losses and weights on the CPU, same seed."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from maedfer.errors import MaedferError
from maedfer.training.distributed import DistEnv
from maedfer.training.loop import TrainLoop
from maedfer.training.optim import create_optimizer
from maedfer.training.runtime import MetricsLog, StopSignals, step_seed
from maedfer.training.schedule import WarmupCosine

SEED, STEPS, ACCUM = 7, 9, 2


class Tiny(nn.Module):
    """A small classifier with dropout (the step's seed matters) and the optimiser's hooks."""

    num_layer_ids = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.GELU(), nn.Dropout(0.2),
                                 nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def no_weight_decay(self) -> set[str]:
        return set()


def batches(count: int) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [{"video": torch.randn(4, 3, 4, 2, 2, generator=g),
             "label": torch.randint(0, 3, (4,), generator=g)} for _ in range(count)]


class Loader(list):
    num_bad = 0

    def set_epoch(self, epoch: int) -> None:
        pass


def parts(fused: bool) -> tuple[Tiny, torch.optim.Optimizer, WarmupCosine]:
    model = Tiny()
    optimizer = create_optimizer(model, lr=1e-2, weight_decay=0.05, fused=fused)
    scheduler = WarmupCosine(optimizer, lr=1e-2, min_lr=1e-4, epochs=1, steps_per_epoch=STEPS,
                             warmup_epochs=0.3, weight_decay=0.05)
    return model, optimizer, scheduler


def loss_of(model: nn.Module, batch: dict, micro: int, bad: set[int]) -> torch.Tensor:
    loss = nn.functional.cross_entropy(model(batch["video"]), batch["label"])
    return loss * float("nan") if micro in bad else loss


def step_as_before(bad: set[int], clip: float | None) -> tuple[list, dict]:
    """The loop as it was: ``loss.item()`` per micro-batch, a bad step not stepped."""
    model, optimizer, scheduler = parts(fused=False)
    losses, step = [], 0
    for micro, batch in enumerate(batches(STEPS * ACCUM)):
        if micro % ACCUM == 0:
            scheduler.apply(step)
            step_loss = step_bad = 0.0
        torch.manual_seed(step_seed(SEED, 2, 0, micro, 0))
        loss = loss_of(model, batch, micro, bad)
        value = loss.item()
        (loss / ACCUM).backward()
        if math.isfinite(value):
            step_loss += value
        else:
            step_bad += 1
        if micro % ACCUM != ACCUM - 1:
            continue
        if step_bad:
            optimizer.zero_grad(set_to_none=True)
            losses.append(None)
        else:
            if clip is not None:
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss / (ACCUM - step_bad))
        scheduler.step()
        step += 1
    return losses, model.state_dict()


def step_now(tmp_path: Path, bad: set[int], clip: float | None, *, fused: bool,
             max_nonfinite: int = 5, log_every: int = 1) -> tuple[list, dict]:
    model, optimizer, scheduler = parts(fused=fused)
    cfg = SimpleNamespace(
        run=SimpleNamespace(seed=SEED, log_every=log_every, max_nonfinite=max_nonfinite),
        optim=SimpleNamespace(accum_steps=ACCUM, clip_grad=clip),
        schedule=SimpleNamespace(epochs=1, max_steps=None), data=SimpleNamespace(batch_size=4))
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    loop = TrainLoop(
        name="test", env=DistEnv(), model=model, raw=model, optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler("cpu", enabled=False),
        loader=Loader(batches(STEPS * ACCUM)), metrics=metrics, cfg=cfg, steps_per_epoch=STEPS,
        checkpoint_path=tmp_path / "last.pt",
        loss_step=lambda batch, epoch, micro: loss_of(model, batch, micro, bad),
        extra_state={},
    )  # fmt: skip
    with StopSignals() as stop:
        assert loop.train_epoch(0, stop) == "done"
    losses = [r["loss"] for r in metrics.records() if r["kind"] == "train"]
    return losses, model.state_dict()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(("bad", "clip"), [(set(), None), ({5, 12}, 1.0)])
def test_losses_and_weights_equal_the_step_that_read_every_loss(tmp_path: Path, fused: bool,
                                                                bad: set, clip: float | None,
                                                                ) -> None:
    """``fused``: the skip goes to AdamW as ``found_inf``; else the CPU decides it."""
    want_losses, want_weights = step_as_before(bad, clip)
    got_losses, got_weights = step_now(tmp_path, bad, clip, fused=fused)
    assert len(got_losses) == STEPS
    for got, want in zip(got_losses, want_losses, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            assert abs(got - want) <= 1e-6 * max(1.0, abs(want))
    tolerance = 1e-6 if fused else 0.0  # fused AdamW rounds differently from foreach
    for key, want in want_weights.items():
        assert (got_weights[key] - want).abs().max() <= tolerance, key


@pytest.mark.parametrize("log_every", [1, 4])
def test_the_non_finite_stop_names_the_exact_step(tmp_path: Path, log_every: int) -> None:
    """Bad steps 3, 4 and 5 (micro-batches 4..9) trip a stop of 3 in a row at step 5; it is
    raised at the next read (step 5, or the log point at step 8), naming step 5."""
    with pytest.raises(MaedferError, match=r"3 optimiser steps in a row \(epoch 1, step 5\)"):
        step_now(tmp_path, set(range(4, 10)) | {11}, None, fused=True, max_nonfinite=3,
                 log_every=log_every)


def test_the_step_reads_the_device_only_at_log_points(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fused optimiser and clipping: one read (a ``tolist``) per log point (steps 4, 8
    and 9, the epoch's end), nothing else read back."""
    calls: list[str] = []

    def counting(name: str, original):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(name)
            return original(*args, **kwargs)
        return wrapper

    for name in ("cpu", "item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    losses, _ = step_now(tmp_path, {5}, 1.0, fused=True, log_every=4)
    assert calls == ["tolist"] * 3 and len(losses) == 3
