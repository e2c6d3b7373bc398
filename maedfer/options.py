"""How an option is declared: one dataclass field with its default and its help line.

Every options dataclass of maedfer (the recipes' sections in :mod:`maedfer.train.config`, the
loader's ``data`` section in :mod:`maedfer.pipelines.options`) declares its fields with
:func:`opt`, so an option has one default, in one place, and one help line, which ``config
show``, ``docs/recipe.md`` and the error messages read. Torch-free, so the command line reads it
cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Choices:
    """``Annotated[str, Choices(fn)]``: a string that must be one of ``fn()``, read when the
    value is set (the backend table, which a backend module extends, says what is valid)."""

    values: Any

    def __call__(self) -> tuple[str, ...]:
        return tuple(self.values())


def opt(default: Any, help: str) -> Any:  # noqa: A002 (the word users read)
    """A config field with its default and its help line."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:  # noqa: A002
    """A config field holding a whole section (a dataclass of options)."""
    return field(default_factory=cls, metadata={"help": help})
