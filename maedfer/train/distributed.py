"""Deprecated alias of :mod:`maedfer.training.distributed` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
