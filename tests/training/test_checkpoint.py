"""Checkpoints: atomic writes, weights_only loading, RNG round trip, mismatches, --init."""

import argparse
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from maedfer.errors import MaedferError
from maedfer.model import create_model
from maedfer.training import checkpoint as ckpt_io
from maedfer.training.optim import create_optimizer
from maedfer.training.precision import grad_scaler
from maedfer.training.schedule import WarmupCosine
from tests.recipes.clipdata import TINY_CLASSIFIER, TINY_MAE, one_thread

OFFICIAL_TINY = Path(__file__).parents[1] / "model" / "fixtures" / "official_tiny.pt"

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def _state(model: torch.nn.Module) -> dict:
    opt = create_optimizer(model, lr=1e-3, layer_decay=0.75)
    sched = WarmupCosine(opt, lr=1e-3, min_lr=1e-6, epochs=2, steps_per_epoch=3)
    model(torch.randn(2, 3, 8, 32, 32)).sum().backward()
    opt.step()  # so the optimiser holds moment tensors
    return {
        "format": ckpt_io.FORMAT,
        "version": ckpt_io.VERSION,
        "model_name": model.model_name,
        "model_config": ckpt_io.plain(model.config),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": grad_scaler(torch.device("cpu"), "fp32").state_dict(),
        "epoch": 1,
        "step": 3,
        "epoch_step": 0,
        "rng": ckpt_io.rng_state(),
        "config": ckpt_io.plain({"data": Path("/x/m.parquet"), "betas": (0.9, 0.999)}),
        "classes": ["a", "b", "c"],
    }


@pytest.fixture()
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lgi_former_tiny", num_classes=3, **TINY_CLASSIFIER)


def test_round_trip_with_weights_only(tmp_path: Path, classifier) -> None:
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = _state(classifier)
    ckpt_io.save_checkpoint(path, state)
    torch.load(path, weights_only=True)  # the contract of docs/design.md, checked directly
    loaded = ckpt_io.load_checkpoint(path)
    assert loaded["config"] == {"data": "/x/m.parquet", "betas": [0.9, 0.999]}
    rebuilt = ckpt_io.model_from_checkpoint(loaded)
    for key, tensor in classifier.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left


def test_rng_states_round_trip() -> None:
    saved = ckpt_io.rng_state()
    first = (torch.rand(4), np.random.rand(3), random.random(), np.random.randn())
    ckpt_io.set_rng_state(saved)
    again = (torch.rand(4), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, classifier, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.save_checkpoint(path, {"format": ckpt_io.FORMAT, "epoch": 1})

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.save_checkpoint(path, {"format": ckpt_io.FORMAT, "epoch": 2})
    monkeypatch.undo()
    assert ckpt_io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_other_class_count_or_architecture_fails_in_one_line(tmp_path: Path, classifier):
    state = _state(classifier)
    other = create_model("lgi_former_tiny", num_classes=5, **TINY_CLASSIFIER)
    with pytest.raises(MaedferError) as err:
        ckpt_io.check_model_matches(state, other, path=tmp_path / "last.pt")
    message = str(err.value)
    assert "\n" not in message and "num_classes 3" in message and "num_classes 5" in message
    deeper = create_model("lgi_former_tiny", num_classes=3, **{**TINY_CLASSIFIER, "depth": 3})
    with pytest.raises(MaedferError, match="depth 2, but this run builds .* depth 3"):
        ckpt_io.check_model_matches(state, deeper, path=tmp_path / "last.pt")
    with pytest.raises(MaedferError, match="holds lgi_former_tiny.*builds lgi_former_small"):
        ckpt_io.check_model_matches(
            state,
            create_model("lgi_former_small", num_classes=3, **TINY_CLASSIFIER),
            path=tmp_path / "last.pt",
        )


def test_unreadable_or_foreign_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MaedferError, match="is not a PyTorch checkpoint") as err:
        ckpt_io.load_checkpoint(junk)
    assert "weights_only" not in str(err.value)  # torch's text suggests weights_only=False
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    with pytest.raises(MaedferError, match="not a maedfer checkpoint"):
        ckpt_io.load_checkpoint(plain)
    with pytest.raises(MaedferError, match="does not exist"):
        ckpt_io.load_checkpoint(tmp_path / "missing.pt")


def test_init_from_our_pretraining_takes_the_encoder(tmp_path: Path, classifier) -> None:
    torch.manual_seed(1)
    mae = create_model("mae_lgi_former_tiny", **TINY_MAE)
    path = tmp_path / "pretrain.pt"
    ckpt_io.save_checkpoint(
        path,
        {
            "format": ckpt_io.FORMAT,
            "model_name": mae.model_name,
            "model_config": ckpt_io.plain(mae.config),
            "model": mae.state_dict(),
            "epoch": 5,
        },
    )
    head, fc_norm = classifier.head.weight.clone(), classifier.fc_norm.weight.clone()
    assert "encoder of mae_lgi_former_tiny" in ckpt_io.load_init(classifier, path)
    ours = classifier.state_dict()
    encoder = {k: v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    assert encoder and all(torch.equal(ours[k], v) for k, v in encoder.items())
    assert {k for k in ours if k.startswith("encoder.")} == set(encoder)  # same module names
    assert torch.equal(classifier.head.weight, head)
    assert torch.equal(classifier.fc_norm.weight, fc_norm)
    wide = create_model("lgi_former_tiny", num_classes=3, **{**TINY_CLASSIFIER, "embed_dim": 64})
    with pytest.raises(MaedferError, match="embed_dim 32, but this run builds .*embed_dim 64"):
        ckpt_io.load_init(wide, path)


def test_init_from_an_official_checkpoint(tmp_path: Path) -> None:
    fixture = torch.load(OFFICIAL_TINY, weights_only=True)
    official = fixture["pretrain_state"]
    path = tmp_path / "checkpoint-49.pth"
    # the official wrapper also pickles the run's argparse arguments
    torch.save({"model": official, "epoch": 49, "args": argparse.Namespace(lr=1e-3)}, path)
    # the official pre-training encoder is built for 16 frames (docs/recipe.md)
    cfg = {k: v for k, v in fixture["config"].items() if k != "num_frames"}
    model = create_model("lgi_former_tiny", num_classes=7, **cfg)
    assert ckpt_io.load_init(model, path).startswith("official pretrain weights")
    assert torch.equal(model.encoder.region_tokens, official["encoder.lg_region_tokens"])
    wrong = create_model("lgi_former_tiny", num_classes=7, **{**cfg, "embed_dim": 32})
    with pytest.raises(MaedferError, match="shape mismatch"):
        ckpt_io.load_init(wrong, path)


# ---------------------------------------------------------------- numbered and weights-only


def test_numbered_checkpoints_keep_the_newest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for epoch in (1, 2, 3, 10):
        path = ckpt_io.save_numbered(run, {"format": ckpt_io.FORMAT, "epoch": epoch}, epoch, keep=2)
        assert path.name == f"epoch-{epoch:04d}.pt"
    assert [p.name for p in ckpt_io.numbered_checkpoints(run)] == ["epoch-0003.pt", "epoch-0010.pt"]
    assert ckpt_io.load_checkpoint(run / "checkpoints" / "epoch-0010.pt")["epoch"] == 10
    ckpt_io.save_numbered(run, {"format": ckpt_io.FORMAT, "epoch": 11}, 11, keep=None)
    assert len(ckpt_io.numbered_checkpoints(run)) == 3  # keep=None deletes nothing
    assert not list((run / "checkpoints").glob(".*.tmp"))
    with pytest.raises(MaedferError, match=r"keep \(0\) must be at least 1"):
        ckpt_io.save_numbered(run, {}, 12, keep=0)


def test_numbered_checkpoint_from_last_pt_survives_the_next_last(tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / ckpt_io.LAST
    ckpt_io.save_checkpoint(last, {"format": ckpt_io.FORMAT, "epoch": 5})
    numbered = ckpt_io.save_numbered(run, last, 5, keep=3)  # a link: no second write
    ckpt_io.save_checkpoint(last, {"format": ckpt_io.FORMAT, "epoch": 6})  # replaces the name
    assert ckpt_io.load_checkpoint(numbered)["epoch"] == 5
    assert ckpt_io.load_checkpoint(last)["epoch"] == 6


def test_weights_only_export_loads_where_a_checkpoint_does(tmp_path: Path, classifier) -> None:
    from maedfer.inference import load_classifier

    run = tmp_path / "run"
    state = _state(classifier)
    state["config"] = {"num_frames": None, "size": None, "stride": 4, "subtract_mean": False}
    ckpt_io.save_checkpoint(run / "checkpoints" / ckpt_io.LAST, state)
    final = ckpt_io.export_weights(run)
    assert final == run / ckpt_io.FINAL
    assert final.stat().st_size < (run / "checkpoints" / ckpt_io.LAST).stat().st_size / 2
    weights = torch.load(final, weights_only=True)
    assert weights["kind"] == "weights" and "optimizer" not in weights and "rng" not in weights
    assert weights["classes"] == ["a", "b", "c"] and weights["epoch"] == 1
    loaded = ckpt_io.load_checkpoint(final)
    assert ckpt_io.is_weights_only(loaded) and not ckpt_io.is_weights_only(state)
    rebuilt = ckpt_io.model_from_checkpoint(loaded)
    for key, tensor in classifier.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    model, settings = load_classifier(final, device="cpu")  # inference
    assert settings.class_names == ["a", "b", "c"] and settings.stride == 4
    assert settings.format == "weights"
    torch.manual_seed(5)
    fresh = create_model("lgi_former_tiny", num_classes=3, **TINY_CLASSIFIER)
    assert "encoder of lgi_former_tiny" in ckpt_io.load_init(fresh, final)  # --init
    assert torch.equal(
        fresh.state_dict()["encoder.patch_embed.proj.weight"],
        classifier.state_dict()["encoder.patch_embed.proj.weight"],
    )
    # from a checkpoint file: beside its run's checkpoints/ folder, or where asked
    assert ckpt_io.export_weights(run / "checkpoints" / ckpt_io.LAST) == final
    assert ckpt_io.export_weights(final, tmp_path / "x.pt") == tmp_path / "x.pt"
