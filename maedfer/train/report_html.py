"""Deprecated alias of :mod:`maedfer.evaluation.report_html` (docs/design.md, "Wings")."""

from maedfer.train import alias

alias(__name__)
