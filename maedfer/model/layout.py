"""Official checkpoint layouts: how a released state dict is recognised and loaded strictly.

A :class:`Layout` is one key layout an authors' code writes (a fine-tuned classifier, a
pre-trained MAE, an encoder export). Its table maps their keys to ours, as torchtune's
``convert_weights.py`` does: ``{}`` stands for a block index, a pattern ending in ``.`` maps
every key below that prefix, and ``None`` drops a key on purpose (a decoder when fine-tuning
starts from a pre-trained MAE). Loading is strict: every key of the file is mapped or dropped
by rule, every tensor of ours is filled or left fresh by rule (``fresh``: a new head), and every
shape agrees; anything else is one error line naming the keys.

The checks run on shapes alone (:func:`plan`), so a full-size layout can be checked against a
model built on the ``meta`` device without allocating it.

Documented in docs/models.md.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from maedfer.errors import MaedferError

Shape = tuple[int, ...]


class OfficialCheckpointError(MaedferError):
    """An official state dict that does not fit the model."""


@dataclass(frozen=True)
class Layout:
    """One released key layout.

    Attributes:
        name: short id, e.g. ``videomae-pretrain``.
        description: what the file is, for messages (``a VideoMAE pre-trained MAE``).
        table: their key patterns -> ours (``None``: dropped on purpose).
        markers: keys every state dict of this layout holds (how it is recognised).
        absent: key prefixes no state dict of this layout holds (tells look-alikes apart).
        fresh: prefixes of our keys the file does not fill (left as initialised).
        fits: the registered models it loads into, for messages (``videomae_*``).
    """

    name: str
    description: str
    table: Mapping[str, str | None]
    markers: tuple[str, ...]
    absent: tuple[str, ...] = ()
    fresh: tuple[str, ...] = ()
    fits: str = ""

    def matches(self, keys: Collection[str]) -> bool:
        if not all(m in keys for m in self.markers):
            return False
        return not (self.absent and any(k.startswith(self.absent) for k in keys))


@dataclass
class LoadReport:
    """What a load did: our keys loaded, official keys dropped by rule, and our keys left as
    initialised (``fc_norm`` and head when starting fine-tuning from pre-training)."""

    source_layout: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)


@functools.cache
def _compile(table_items: tuple[tuple[str, str | None], ...]) -> list:
    compiled = []
    for pattern, target in table_items:
        regex = re.escape(pattern).replace(r"\{\}", r"(\d+)")
        is_prefix = pattern.endswith(".")
        compiled.append(
            (re.compile("^" + regex + ("(.+)$" if is_prefix else "$")), is_prefix, target)
        )
    return compiled


def convert_key(key: str, table: Mapping[str, str | None]) -> tuple[bool, str | None]:
    """Map one official key. Returns (matched, our key, or None when dropped by rule)."""
    for regex, is_prefix, target in _compile(tuple(table.items())):
        match = regex.match(key)
        if match is None:
            continue
        if target is None:
            return True, None
        groups = match.groups()
        index, rest = (groups[:-1], groups[-1]) if is_prefix else (groups, "")
        return True, target.format(*index) + rest
    return False, None


HEAD_WIDTH = 64  # every released ViT of the lineage: 64 channels per attention head


def heads_of(width: int) -> int | None:
    """The attention heads of a released model of this width (``None``: not a multiple of 64,
    the weights do not tell)."""
    return width // HEAD_WIDTH if width % HEAD_WIDTH == 0 else None


def _listing(label: str, items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{label} ({len(items)}): {shown}{more}"


def plan(
    layout: Layout, source: Mapping[str, Shape], target: Mapping[str, Shape], model_name: str
) -> tuple[dict[str, str], LoadReport]:
    """Match a state dict's keys and shapes against a model's, without touching tensors.

    Args:
        layout: the layout ``source`` is in.
        source: their key -> shape.
        target: our key -> shape (``model.state_dict()``, possibly on the meta device).
        model_name: for the message.
    Returns:
        ``({our key: their key}, report)``.
    Raises:
        OfficialCheckpointError: one line naming every unexpected, missing or mis-shaped key.
    """
    report = LoadReport(source_layout=layout.name)
    mapping: dict[str, str] = {}
    unexpected, mis_shaped, shaped_targets = [], [], set()
    for key, shape in source.items():
        matched, ours = convert_key(key, layout.table)
        if matched and ours is None:
            report.dropped.append(key)
            continue
        if not matched or ours not in target:
            unexpected.append(key)
            continue
        if tuple(shape) != tuple(target[ours]):
            mis_shaped.append(f"{key} (checkpoint {list(shape)} vs model {list(target[ours])})")
            shaped_targets.add(ours)  # reported once, as mis-shaped
            continue
        mapping[ours] = key
    missing = [
        k
        for k in target
        if k not in mapping and k not in shaped_targets and not k.startswith(layout.fresh)
    ]
    if unexpected or missing or mis_shaped:
        parts = [
            _listing("unexpected", unexpected) if unexpected else "",
            _listing("missing", missing) if missing else "",
            _listing("shape mismatch", mis_shaped) if mis_shaped else "",
        ]
        raise OfficialCheckpointError(
            f"{layout.description} does not fit {model_name}: " + "; ".join(p for p in parts if p)
        )
    report.loaded = sorted(mapping)
    report.fresh = sorted(k for k in target if k not in mapping)
    return mapping, report


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_layout(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], layout: Layout
) -> LoadReport:
    """Load ``state_dict`` (in ``layout``) into ``model`` in place, strictly (see :func:`plan`)."""
    ours = model.state_dict()
    mapping, report = plan(
        layout, shapes(state_dict), shapes(ours), getattr(model, "model_name", type(model).__name__)
    )
    with torch.no_grad():
        for key, theirs in mapping.items():
            ours[key].copy_(state_dict[theirs])
    return report
