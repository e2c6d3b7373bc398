"""The built-in demo: a labelled dataset rendered from the committed portraits, run end to end.

Documented in docs/design.md, "Wings".
"""

from maedfer.demo.pipeline import DemoConfig, run

__all__ = ["DemoConfig", "run"]
