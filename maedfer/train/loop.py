"""Deprecated alias of :mod:`maedfer.training.loop` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
