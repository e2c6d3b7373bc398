"""Deprecated alias of :mod:`maedfer.evaluation.comparison` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
