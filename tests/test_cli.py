"""The command line as a user meets it: commands, exit codes, one-line errors, JSON output."""

import json

import pytest
import torch
from typer.testing import CliRunner

from maedfer.cli import app

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("prepare", "pretrain", "finetune", "evaluate", "predict", "profile", "demo"):
        assert command in result.output


def test_unknown_dataset_lists_the_valid_ones() -> None:
    result = runner.invoke(app, ["prepare", "affectnet", "--raw", ".", "--out", "x"])
    assert result.exit_code == 2
    assert "ravdess" in result.output and "enterface05" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_one_clear_line() -> None:
    result = runner.invoke(app, ["profile", "model", "--device", "cuda"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "maedfer: error: --device cuda asked for, but torch sees no CUDA device here"
    ]


def test_unknown_model_name_is_one_clear_line() -> None:
    result = runner.invoke(app, ["profile", "model", "--name", "resnet50", "--device", "cpu"])
    assert result.exit_code == 1
    assert "unknown classifier 'resnet50'" in result.output and "lgi_former_base" in result.output


def test_profile_model_json_has_the_design_keys() -> None:
    args = ["profile", "model", "--name", "lgi_former_tiny", "--batches", "1", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["stage"] == "model" and figures["device"] == "cpu"
    for key in ("params", "gmacs", "fwd_s_per_clip", "fwd_bwd_s_per_clip"):
        assert figures[key] > 0
    assert figures["baseline"]["name"] == "vit_base"
    assert figures["baseline"]["params"] == 86_232_583
