"""Deprecated alias of :mod:`maedfer.config`, the config machinery (docs/design.md, "Configs")."""

import sys
import warnings

import maedfer.config

warnings.warn(
    "maedfer.options moved to maedfer.config (docs/design.md); the old path goes in "
    "the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = maedfer.config
