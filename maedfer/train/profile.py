"""Deprecated alias of :mod:`maedfer.recipes.profile` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
