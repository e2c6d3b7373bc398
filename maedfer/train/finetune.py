"""Deprecated alias of :mod:`maedfer.recipes.finetune` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
