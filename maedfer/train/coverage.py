"""Deprecated alias of :mod:`maedfer.evaluation.coverage` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
