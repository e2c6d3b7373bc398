"""The built-in demo: a labelled dataset rendered from the committed portraits, run end to end."""

from maedfer.demo.pipeline import DemoConfig, run

__all__ = ["DemoConfig", "run"]
