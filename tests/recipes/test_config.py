"""Recipe configs: shipped files, YAML round trip, dotted overrides, --dry-run, describe()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from maedfer.cli import app
from maedfer.errors import MaedferError
from maedfer.model import input_contract
from maedfer.pipelines import augment
from maedfer.pipelines.plan import EpochPlan, SampleConfig
from maedfer.pipelines.select import ClipTable
from maedfer.recipes import config as config_io
from maedfer.recipes import finetune
from maedfer.recipes.finetune import FinetuneRecipe
from maedfer.training import setup
from maedfer.training.distributed import DistEnv
from tests.recipes.clipdata import (
    TINY_FINETUNE_KEYS,
    TINY_PRETRAIN_KEYS,
    cli_sets,
    make_dataset,
    one_thread,
)

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
runner = CliRunner()
SHIPPED = [
    "demo-finetune",
    "demo-pretrain",
    "finetune-crema-d",
    "finetune-dfew",
    "finetune-enterface05",
    "finetune-ferv39k",
    "finetune-mafw",
    "finetune-ravdess",
    "pretrain-voxceleb2",
]
DESCRIBE_KEYS = {
    "recipe",
    "config",
    "model",
    "data",
    "optimizer",
    "schedule",
    "precision",
    "world_size",
    "total_batch",
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("config-data"))  # 3 classes x 8, 2 folds


def test_every_shipped_config_is_listed_and_loads() -> None:
    assert config_io.list_configs() == SHIPPED
    for name in SHIPPED:
        cfg = config_io.load(name)
        assert cfg.recipe == name.split("-")[0] or name.startswith("demo-")
    result = runner.invoke(app, ["config", "list"])
    assert result.exit_code == 0 and all(name in result.output for name in SHIPPED)


def test_shipped_configs_hold_the_published_per_dataset_values() -> None:
    classes = {"dfew": 7, "ferv39k": 7, "mafw": 11, "crema-d": 6, "ravdess": 8, "enterface05": 6}
    for dataset, count in classes.items():
        cfg = config_io.load(f"finetune-{dataset}")
        assert cfg.model.num_classes == count
        assert cfg.data.stride == (1 if dataset == "ferv39k" else 4)
        # the official fine-tuning recipe (all datasets)
        assert cfg.data.temporal_rule == "reference" and cfg.optim.blr == 1e-3
        assert cfg.optim.layer_decay == 0.75 and cfg.optim.betas == (0.9, 0.999)
        assert (cfg.loss.mixup, cfg.loss.cutmix, cfg.loss.smoothing) == (0.8, 1.0, 0.1)
        assert cfg.data.rand_augment == augment.RAND_AUGMENT and cfg.eval.test_views == 2
        assert cfg.model.drop_path == 0.1 and cfg.schedule.epochs == 100
    pre = config_io.load("pretrain-voxceleb2")
    assert pre == config_io.PretrainConfig()  # the defaults are the official recipe
    assert (pre.optim.blr, pre.schedule.min_blr, pre.optim.betas) == (3e-4, 1e-5, (0.9, 0.95))
    assert pre.model.mask_ratio == 0.9 and pre.data.temporal_rule == "stride"
    assert config_io.load("finetune-dfew").data == config_io.FinetuneConfig().data


@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run_json_builds_every_shipped_config(
    name: str, manifest: Path, tmp_path: Path
) -> None:
    pretraining = config_io.load(name).recipe == "pretrain"
    keys = TINY_PRETRAIN_KEYS if pretraining else {**TINY_FINETUNE_KEYS, "model.num_classes": None}
    args = [
        "pretrain" if pretraining else "finetune",
        "--config",
        name,
        "--data",
        str(manifest),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--dry-run",
        "--json",
        *cli_sets({**keys, "data.batch_size": 4, "data.workers": 0}),
        *([] if pretraining else ["--fold", "1"]),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    assert DESCRIBE_KEYS <= set(described)
    assert {"backend", "temporal_rule", "augment", "train_clips", "test_clips"} <= set(
        described["data"]
    )
    assert {"steps", "warmup_steps", "peak_lr", "min_lr"} <= set(described["schedule"])
    assert described["config"]["data"]["backend"] == described["data"]["backend"] == "pyav"
    assert described["precision"] == described["config"]["run"]["precision"] == "fp32"
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_config_show_round_trips(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "config",
            "show",
            "finetune-mafw",
            "--set",
            "optim.lr=1e-3",
            "--set",
            "model.overrides.depth=2",
        ],
    )
    assert result.exit_code == 0, result.output
    shown = config_io.from_dict(yaml.safe_load(result.stdout))
    expected = config_io.load(
        "finetune-mafw", overrides=["optim.lr=1e-3", "model.overrides.depth=2"]
    )
    assert shown == expected and shown.optim.lr == 0.001 and shown.model.overrides == {"depth": 2}
    # the printed file, edited and run, is a config: load it back by path
    path = tmp_path / "mine.yaml"
    path.write_text(result.stdout)
    assert config_io.load(path, recipe="finetune") == expected


@pytest.mark.parametrize(
    ("command", "item", "expected"),
    [
        ("finetune", "optim.lrr=1", "unknown config key 'optim.lrr'; nearest valid: optim.lr"),
        ("pretrain", "data.strde=2", "unknown config key 'data.strde'; nearest valid: data.stride"),
        ("finetune", "run.precision=fp8", "run.precision ('fp8') must be one of auto, bf16"),
        ("finetune", "optim.lr", "expected key=value"),
    ],
)
def test_a_bad_set_is_one_line(command: str, item: str, expected: str, manifest: Path) -> None:
    result = runner.invoke(app, [command, "--data", str(manifest), "--set", item])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and expected in result.output, result.output


def test_a_config_of_the_other_recipe_or_a_doubled_key_is_refused(manifest: Path) -> None:
    with pytest.raises(MaedferError, match="that is a pretrain config; finetune needs"):
        config_io.load("pretrain-voxceleb2", recipe="finetune")
    with pytest.raises(MaedferError, match="model.overrides.num_frames: set model.num_frames"):
        finetune.run(
            overrides={**TINY_FINETUNE_KEYS, "model.overrides.num_frames": 8},
            data=manifest,
            fold=1,
            device="cpu",
            dry_run=True,
        )


def test_describe_gives_the_optimizer_groups_and_the_schedule(manifest: Path) -> None:
    cfg = config_io.load(
        recipe="finetune",
        overrides={
            **TINY_FINETUNE_KEYS,
            "data.manifest": str(manifest),
            "data.fold": 1,
            "data.batch_size": 4,
            "data.workers": 0,
            "run.device": "cpu",
            "schedule.epochs": 2,
            "schedule.warmup_epochs": 1,
        },
    )
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    try:
        described = recipe.describe()
        trainable = [p for p in recipe._raw.parameters() if p.requires_grad]
    finally:
        recipe.cleanup()
    groups = described["optimizer"]["groups"]
    # depth 2 -> layer ids 0..3: scales 0.75**3, 0.75**2, 0.75, 1, each with and without decay
    assert [(g["lr_scale"], g["weight_decay"]) for g in groups] == [
        (s, wd) for s in (0.75**3, 0.75**2, 0.75, 1.0) for wd in (0.05, 0.0)
    ]
    assert sum(g["params"] for g in groups) == len(trainable)
    assert sum(g["numel"] for g in groups) == sum(p.numel() for p in trainable)
    assert described["model"]["trainable_params"] == sum(p.numel() for p in trainable)
    # 12 train clips, batch 4 -> 3 steps per epoch; lr = blr * 4 / 256
    assert described["schedule"] == {
        "steps": 6,
        "steps_per_epoch": 3,
        "warmup_steps": 3,
        "peak_lr": 1e-3 * 4 / 256,
        "min_lr": 1e-6 * 4 / 256,
        "max_steps": None,
    }
    assert described["total_batch"] == 4 and described["world_size"] == 1
    assert described["data"]["temporal_rule"] == "reference"
    assert [a["name"] for a in described["data"]["augment"]] == [
        "rand_augment",
        "random_resized_crop",
        "horizontal_flip",
        "random_erasing",
        "mixup_cutmix",
    ]
    assert described["data"]["augment"][0]["policy"] == "rand-m7-n4-mstd0.5-inc1"
    assert (described["data"]["train_clips"], described["data"]["test_clips"]) == (12, 12)


def _official_train_window(n: int, end: int | None, clip_len: int = 16, rate: int = 4) -> list[int]:
    """The official fine-tuning loader's rule, written out (VideoMAE ``VideoClsDataset``)."""
    converted = clip_len * rate
    if n <= converted:
        index = np.linspace(0, n, num=n // rate)
        index = np.concatenate((index, np.ones(clip_len - n // rate) * n))
        return np.clip(index, 0, n - 1).astype(np.int64).tolist()
    start = end - converted
    index = np.linspace(start, end, num=clip_len)
    return np.clip(index, start, end - 1).astype(np.int64).tolist()


@pytest.mark.parametrize("n", [10, 16, 63, 64, 65, 100, 300])
def test_default_finetune_window_is_the_reference_rule(n: int) -> None:
    cfg = config_io.FinetuneConfig()
    inputs = input_contract(cfg.model.name)  # model.num_frames/img_size null: the model's
    options = setup.loader_options(
        {"num_frames": inputs.num_frames, "img_size": inputs.img_size}, DistEnv(), cfg.run.seed
    )  # what the recipe gives build_loader
    sample = SampleConfig.from_data(
        cfg.data,
        mode="train",
        num_frames=options["num_frames"],
        size=options["size"],
        seed=options["seed"],
        test_views=2,
    )
    rows = 40
    table = ClipTable(
        clip_id=pa.array([f"c{i}" for i in range(rows)]),
        path=pa.array(["x.mp4"] * rows),
        label=np.zeros(rows, np.int64),
        num_frames=np.full(rows, n, np.int64),
        crop=np.full((rows, 4), -1, np.int64),
        root=Path("/"),
    )
    official = (
        {tuple(_official_train_window(n, end)) for end in range(64, n)}
        if n > 64
        else {tuple(_official_train_window(n, None))}
    )
    for epoch in range(3):
        plan = EpochPlan(table, sample, epoch=epoch)
        windows = {tuple(plan.spec(i).frame_indices.tolist()) for i in range(len(plan))}
        assert windows <= official, (n, windows - official)
    if n > 100:  # random ends: many distinct windows, as the official randint gives
        assert len(windows) > 10


def test_pretraining_takes_the_exact_stride_window() -> None:
    assert config_io.PretrainConfig().data.temporal_rule == "stride"  # exact stride 4, §4.1


def test_docs_list_every_key_with_its_default() -> None:
    """docs/recipe.md's tables are the config declaration's (regenerate: python -m
    maedfer.recipes.config)."""
    from maedfer.recipes.config import markdown_tables

    text = (Path(__file__).resolve().parents[2] / "docs" / "recipe.md").read_text()
    start = text.index("-->\n", text.index("<!-- generated")) + 4
    assert text[start : text.index("<!-- end of generated")] == markdown_tables()


def test_shipped_documents_cite_only_the_repository() -> None:
    """README and docs/ never send a reader to files they do not have."""
    root = Path(__file__).resolve().parents[2]
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text and "shared/" not in text, path
        for name in ("MODEL.md", "DESIGN.md", "DATASETS.md", "STYLE.md"):
            assert name not in text, (path, name)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("region_size=2,5,10", [2, 5, 10]),
        ("region_size=[2, 5, 10]", [2, 5, 10]),
        ("qkv_bias=false", False),
        ("drop_path_rate=1e-1", 0.1),
        ("depth=2", 2),
        ("pooling=org", "org"),
    ],
)
def test_one_set_grammar_for_recipes_and_models(text: str, value: object) -> None:
    """A recipe's ``--set model.overrides.K=V`` and a model's ``--set K=V`` (predict, export,
    test) read the same text as the same value."""
    from maedfer.config import parse_model_overrides, parse_overrides

    key = text.partition("=")[0]
    recipe = parse_overrides([f"model.overrides.{text}"])[f"model.overrides.{key}"]
    model = parse_model_overrides([text])[key]
    assert recipe == model == value
    assert type(model) is type(value)
