"""The models' input contracts and published figures as Markdown (docs/models.md's tables).

The facts live in the registry entries (:func:`maedfer.model.model_info`); this renders them,
and ``tests/model/test_catalog.py`` keeps the document equal to it. Regenerate with
``python -m maedfer.model.catalog``.
"""

from __future__ import annotations

from maedfer.model.registry import list_models, model_info

#: The models of docs/models.md, in its order (MAE-DFER's classifier first).
CATALOG = (
    "lgi_former_base",
    "videomae_base",
    "videomae_base_224",
    "marlin_small",
    "marlin_base",
    "marlin_large",
    "svfap_base",
    "s4d_base",
    "hicmae_base",
)


def _norm(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def contract_table() -> str:
    """One row per model: frames, side, stride, normalisation, the authors' face crop."""
    lines = [
        "| model | frames | side | stride | mean / std of [0, 1] RGB | authors' face crop |",
        "|---|---|---|---|---|---|",
    ]
    for name in CATALOG:
        c = model_info(name)["inputs"]
        norm = "ImageNet" if c.imagenet else f"{_norm(c.mean)} / {_norm(c.std)}"
        lines.append(
            f"| `{name}` | {c.num_frames} | {c.img_size} | {c.stride} | {norm} | {c.face_crop} |"
        )
    return "\n".join(lines) + "\n"


def published_table() -> str:
    """One row per model and dataset its registry entry has a published figure for."""
    lines = [
        "| model | dataset | UAR % | WAR % | aggregation | source |",
        "|---|---|---|---|---|---|",
    ]
    for name in CATALOG:
        for dataset, p in model_info(name)["published"].items():
            uar = "-" if p.uar is None else f"{p.uar:.2f}"
            war = "-" if p.war is None else f"{p.war:.2f}"
            note = f"; {p.note}" if p.note else ""
            lines.append(
                f"| `{name}` | {dataset} | {uar} | {war} | {p.aggregation} | {p.source}{note} |"
            )
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """Both tables, as docs/models.md holds them between its generated markers."""
    missing = [n for n in CATALOG if n not in list_models()]
    if missing:
        raise ValueError(f"catalog names unregistered models: {missing}")
    return (
        "### Input contracts\n\n" + contract_table() + "\n### Published figures in the "
        "registry\n\n" + published_table()
    )


if __name__ == "__main__":
    print(markdown(), end="")
