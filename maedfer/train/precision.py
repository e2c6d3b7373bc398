"""Deprecated alias of :mod:`maedfer.training.precision` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
