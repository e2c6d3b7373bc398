"""Deprecated alias of :mod:`maedfer.evaluation.metrics` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
