"""Deprecated alias of :mod:`maedfer.recipes.protocol` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
