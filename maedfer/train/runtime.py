"""Deprecated alias of :mod:`maedfer.training.runtime` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
