"""Deprecated alias of :mod:`maedfer.evaluation.testing` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
