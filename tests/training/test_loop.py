"""The shared training loop itself (maedfer.training.loop): ``TrainLoop(parts, settings)`` on a
tiny model, without a recipe.

The step without host reads (losses and non-finite counts summed on the device, read at log
points; a bad step skipped on the device) against the step it replaced, which read every loss
with ``.item()``: the same losses and weights on the CPU, same seed. Then the loop's own
contract: its settings are checked, epochs end in a checkpoint with the resume state, a stop
signal ends the run after the step, ``max_steps`` caps it, and too many faulty clips stop it in
one line after listing them."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from maedfer.errors import MaedferError
from maedfer.pipelines.loader import TooManyBadClips
from maedfer.training.distributed import DistEnv
from maedfer.training.loop import LoopSettings, TrainLoop, TrainParts
from maedfer.training.optim import create_optimizer
from maedfer.training.runtime import MetricsLog, StopSignals, step_seed
from maedfer.training.schedule import WarmupCosine

SEED, STEPS, ACCUM = 7, 9, 2


class Tiny(nn.Module):
    """A small classifier with dropout (the step's seed matters) and the optimiser's hooks."""

    num_layer_ids = 1
    model_name = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.config = {"classes": 3}
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(48, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def no_weight_decay(self) -> set[str]:
        return set()


def batches(count: int) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [
        {
            "video": torch.randn(4, 3, 4, 2, 2, generator=g),
            "label": torch.randint(0, 3, (4,), generator=g),
        }
        for _ in range(count)
    ]


class Loader(list):
    num_bad = 0
    dataset_size = STEPS * ACCUM * 4

    def set_epoch(self, epoch: int) -> None:
        pass


def parts(fused: bool) -> tuple[Tiny, torch.optim.Optimizer, WarmupCosine]:
    model = Tiny()
    optimizer = create_optimizer(model, lr=1e-2, weight_decay=0.05, fused=fused)
    scheduler = WarmupCosine(
        optimizer,
        lr=1e-2,
        min_lr=1e-4,
        epochs=1,
        steps_per_epoch=STEPS,
        warmup_epochs=0.3,
        weight_decay=0.05,
    )
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


def make_loop(
    tmp_path: Path,
    bad: set[int] = frozenset(),
    clip: float | None = None,
    *,
    fused: bool = False,
    steps: int = STEPS,
    **settings,
) -> TrainLoop:
    """A loop over ``steps`` optimiser steps of the tiny model (micro-batches in ``bad`` give
    a non-finite loss)."""
    model, optimizer, scheduler = parts(fused=fused)
    loop_parts = TrainParts(
        env=DistEnv(),
        model=model,
        raw=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        loader=Loader(batches(steps * ACCUM)),
        metrics=MetricsLog(tmp_path / "metrics.jsonl"),
        steps_per_epoch=steps,
        checkpoint_path=tmp_path / "checkpoints" / "last.pt",
        loss_step=lambda batch, epoch, micro: loss_of(model, batch, micro, bad),
    )
    values = {
        "name": "test",
        "epochs": 1,
        "batch_size": 4,
        "accum_steps": ACCUM,
        "seed": SEED,
        "clip_grad": clip,
        **settings,
    }
    return TrainLoop(loop_parts, LoopSettings(**values))


def step_now(
    tmp_path: Path,
    bad: set[int],
    clip: float | None,
    *,
    fused: bool,
    max_nonfinite: int = 5,
    log_every: int = 1,
) -> tuple[list, dict]:
    loop = make_loop(
        tmp_path, bad, clip, fused=fused, max_nonfinite=max_nonfinite, log_every=log_every
    )
    with StopSignals() as stop:
        assert loop.train_epoch(0, stop) == "done"
    losses = [r["loss"] for r in loop.metrics.records() if r["kind"] == "train"]
    return losses, loop.raw.state_dict()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(("bad", "clip"), [(set(), None), ({5, 12}, 1.0)])
def test_losses_and_weights_equal_the_step_that_read_every_loss(
    tmp_path: Path,
    fused: bool,
    bad: set,
    clip: float | None,
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
        step_now(
            tmp_path,
            set(range(4, 10)) | {11},
            None,
            fused=True,
            max_nonfinite=3,
            log_every=log_every,
        )


def test_the_step_reads_the_device_only_at_log_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": 0}, r"epochs \(0\) must be at least 1"),
        ({"accum_steps": 0}, r"accum_steps \(0\) must be at least 1"),
        ({"max_steps": 0}, r"max_steps \(0\) must be at least 1"),
        ({"clip_grad": 0.0}, r"clip_grad \(0.0\) must be positive"),
    ],
)
def test_settings_are_checked_in_one_line(values: dict, message: str) -> None:
    with pytest.raises(MaedferError, match=message):
        LoopSettings(**{"name": "x", "epochs": 1, "batch_size": 2, **values})


def test_epochs_end_in_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    """Two epochs in one go equal one epoch, a checkpoint, and a new loop restored from it."""
    whole = make_loop(tmp_path / "whole", epochs=2, steps=3)
    assert whole.run() == "done" and whole.progress.epochs_run == 2
    first = make_loop(tmp_path / "parts", epochs=1, steps=3)
    first.run()
    state = torch.load(first.checkpoint_path, weights_only=True)
    assert (state["epoch"], state["step"], state["epoch_step"]) == (1, 3, 0)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "model_name"} <= set(state)
    second = make_loop(tmp_path / "parts", epochs=2, steps=3)
    second.raw.load_state_dict(state["model"])
    second.optimizer.load_state_dict(state["optimizer"])
    second.scheduler.load_state_dict(state["scheduler"])
    second.restore(state)
    assert second.run() == "done"
    for key, want in whole.raw.state_dict().items():
        assert torch.equal(second.raw.state_dict()[key], want), key
    epochs = [r["loss"] for r in second.metrics.records() if r["kind"] == "epoch"]
    assert epochs == [r["loss"] for r in whole.metrics.records() if r["kind"] == "epoch"]


def test_max_steps_and_a_stop_signal_end_the_run_after_the_step(
    tmp_path: Path, monkeypatch
) -> None:
    capped = make_loop(tmp_path / "capped", max_steps=2, epochs=3, steps=4)
    assert capped.run() == "max_steps" and capped.progress.global_step == 2
    assert capped.checkpoint_path.is_file()
    loop = make_loop(tmp_path / "stopped", epochs=3, steps=4)
    original = TrainLoop.optimizer_step

    def signalled(self):  # noqa: ANN001, ANN202
        if self.progress.global_step == 1:
            signal.raise_signal(signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(TrainLoop, "optimizer_step", signalled)
    assert loop.run() == "stopped" and loop.stopped_by == "SIGTERM"
    # a signal during step 2 stops after step 3 (the step under way has decided already)
    assert loop.progress.global_step == 3
    assert torch.load(loop.checkpoint_path, weights_only=True)["step"] == 3


def test_too_many_faulty_clips_stop_in_one_line_after_listing_them(tmp_path: Path) -> None:
    loop = make_loop(tmp_path / "run" / "x", steps=2, max_bad_share=0.1)

    class Faulty(Loader):
        faults = type("Faults", (), {"reasons": {"c1": "undecodable"}})()
        dataset_size = 8

        def __iter__(self):  # noqa: ANN204
            yield from ()
            raise TooManyBadClips(
                "2 of 8 training clips are faulty (more than 10%)", {"c1": "undecodable"}, 8
            )

    loop.loader = Faulty()
    with pytest.raises(
        MaedferError,
        match=r"faulty.*all are listed in .*bad_clips.json.*"
        r"run the same command again",
    ):
        loop.run()
