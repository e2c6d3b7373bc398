"""Deprecated alias of :mod:`maedfer.training.resume` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
