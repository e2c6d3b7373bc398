"""Per-step warmup + cosine schedule, as MAE-DFER's ``utils.cosine_scheduler`` (docs/recipe.md)."""

import math

import numpy as np
import pytest
import torch

from maedfer.errors import MaedferError
from maedfer.training.optim import create_optimizer
from maedfer.training.schedule import WarmupCosine, cosine_schedule
from tests.recipes.clipdata import one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def test_worked_example_from_the_docstring() -> None:
    values = cosine_schedule(1e-3, 1e-6, epochs=2, steps_per_epoch=3, warmup_epochs=1)
    # linspace(0, base, 3) then base + half-cosine over 3 steps (final never reached)
    expected = [0.0, 5e-4, 1e-3, 1e-3, 1e-6 + 0.75 * (1e-3 - 1e-6), 1e-6 + 0.25 * (1e-3 - 1e-6)]
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_reference_formula_on_a_long_run() -> None:
    base, final, epochs, n, warm = 3.75e-4, 3.75e-7, 100, 37, 5
    values = cosine_schedule(base, final, epochs=epochs, steps_per_epoch=n, warmup_epochs=warm)
    assert len(values) == epochs * n
    warmup = warm * n
    np.testing.assert_allclose(values[:warmup], np.linspace(0, base, warmup))
    n_cos = epochs * n - warmup
    i = 1234
    expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n_cos))
    assert values[warmup + i] == pytest.approx(expected, rel=1e-12)
    assert np.all(np.diff(values[warmup:]) <= 0) and values[-1] > final


def test_warmup_longer_than_the_run_is_cut_and_empty_runs_refused() -> None:
    values = cosine_schedule(1.0, 0.0, epochs=1, steps_per_epoch=4, warmup_epochs=3)
    np.testing.assert_allclose(values, np.linspace(0, 1, 4))
    with pytest.raises(MaedferError, match="steps per epoch"):
        cosine_schedule(1.0, 0.0, epochs=1, steps_per_epoch=0)


def _optimizer() -> torch.optim.Optimizer:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.num_layer_ids = 1
    model.layer_id = lambda name: 0
    model.no_weight_decay = lambda: set()
    opt = create_optimizer(model, lr=1.0, weight_decay=0.05)
    opt.param_groups[0]["lr_scale"] = 0.5  # as a layer-decayed group would carry
    return opt


def test_apply_sets_scaled_lr_and_decay_only_on_decaying_groups() -> None:
    opt = _optimizer()
    sched = WarmupCosine(
        opt,
        lr=2.0,
        min_lr=0.0,
        epochs=2,
        steps_per_epoch=2,
        warmup_epochs=1,
        weight_decay=0.05,
        weight_decay_end=0.15,
    )
    assert sched.apply(1) == 2.0
    decaying = [g for g in opt.param_groups if g["weight_decay"] > 0]
    exempt = [g for g in opt.param_groups if g["weight_decay"] == 0]
    assert decaying and exempt
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2.0 * g["lr_scale"])
    sched.apply(3)
    assert decaying[0]["weight_decay"] == pytest.approx(sched.wd_values[3])
    assert 0.05 < sched.wd_values[3] < 0.15 and exempt[0]["weight_decay"] == 0.0
    assert sched.apply(99) == pytest.approx(sched.lr_values[-1])  # past the end: last value


def test_constant_weight_decay_by_default_and_state_round_trip() -> None:
    opt = _optimizer()
    kw = dict(lr=1.0, min_lr=0.1, epochs=3, steps_per_epoch=2, warmup_epochs=1, weight_decay=0.05)
    sched = WarmupCosine(opt, **kw)
    assert np.all(sched.wd_values == 0.05)
    sched.step()
    sched.step()
    state = sched.state_dict()
    assert all(isinstance(v, int | float | type(None)) for v in state.values())
    other = WarmupCosine(opt, **kw)
    other.load_state_dict(state)
    assert other.step_index == 2
    changed = WarmupCosine(opt, **{**kw, "epochs": 4})
    with pytest.raises(MaedferError, match="epochs 3 -> 4"):
        changed.load_state_dict(state)
