"""Deprecated alias of :mod:`maedfer.recipes.config` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
