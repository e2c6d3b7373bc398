"""The config machinery: options declared as dataclass fields, read from YAML, changed by
dotted overrides (docs/design.md, "Configs").

Every options dataclass of maedfer (the recipes' trees in :mod:`maedfer.recipes.config`, the
loader's ``data`` section in :mod:`maedfer.pipelines.options`, ``prepare``'s
:class:`maedfer.preprocess.options.PrepareConfig` and the datasets' own options) declares each
field with :func:`opt`: one default, in one place, and one help line, which ``config show``,
``docs/recipe.md`` and the error messages read. A section is a field holding another such
dataclass (:func:`section`).

**One override grammar**, used by every ``--set`` of the command line (the recipes, ``prepare``,
``predict``, ``export``, ``embed``, ``test``, ``reconstruct``): ``KEY=VALUE`` where the value is
read as YAML (``1e-3`` is 0.001, ``[0.9, 0.95]`` a list, ``{depth: 2}`` a mapping, ``null``
``None``, ``true`` a boolean); numbers or booleans separated by commas are a list too
(``region_size=2,5,10`` is ``[2, 5, 10]``). A value is then checked against the field's type
(:func:`coerce`), and an unknown key is refused in one line naming it and the nearest valid
keys, as torchtune's and spaCy's command lines do.

Torch-free, so the command line and the configs import it cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from maedfer.errors import MaedferError

#: The section of a run's ``config.yaml`` that records what the run resolved (world size,
#: total batch, the lr range): facts of that run, not options, so a loader reads past it.
RESOLVED = "resolved"


# ---------------------------------------------------------------------------------- declaring


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


def field_default(cls: type, name: str) -> Any:
    """The declared default of option ``name`` of the options class ``cls``."""
    found = next(f for f in dataclasses.fields(cls) if f.name == name)
    return found.default


def help_of(cls: type, name: str) -> str:
    """The help line of option ``name`` of the options class ``cls`` (the command line shows
    it beside the flag that sets the option)."""
    found = next(f for f in dataclasses.fields(cls) if f.name == name)
    return str(found.metadata.get("help", ""))


def option_names(cls: type) -> tuple[str, ...]:
    """The options of a section class (or of its instance's class)."""
    return tuple(f.name for f in dataclasses.fields(cls))


# ---------------------------------------------------------------------------------- keys


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def keys(cfg_or_cls: Any) -> list[str]:
    """Every dotted key of a config class (``data.stride``, ``optim.lr``, ...), in order."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += [f"{f.name}.{k}" for k in keys(hints[f.name])]
        else:
            out.append(f.name)
    return out


def _unknown(key: str, valid: Iterable[str]) -> MaedferError:
    valid = list(valid)
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not near:
        head = key.split(".")[0]
        near = [k for k in valid if k.startswith(head + ".")][:6] or valid[:6]
    return MaedferError(f"unknown config key {key!r}; nearest valid: {', '.join(near)}")


class CommaList(list):
    """A list read from comma-separated text (``2,5,10``); a text option keeps the text."""

    def __init__(self, items: Iterable[Any], text: str) -> None:
        super().__init__(items)
        self.text = text


def parse_value(text: str) -> Any:
    """One ``--set`` value: YAML (``1e-3`` -> 0.001, ``[2, 5, 10]``, ``null``, ``true``), and
    numbers or booleans separated by commas as a list (``2,5,10`` -> ``[2, 5, 10]``)."""
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        if "," in value:
            parts = [_scalar(p) for p in value.split(",")]
            if all(isinstance(p, (int, float, bool)) for p in parts):
                return CommaList(parts, value)
            return value
        return _scalar(value)
    return value


def _scalar(text: str) -> Any:
    """A number YAML 1.1 reads as text (``1e-3``), else the YAML value of ``text``."""
    value = text.strip()
    try:
        return float(value) if any(c in value.lower() for c in ".e") else int(value)
    except ValueError:
        pass
    try:
        return yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        return text


def parse_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["optim.lr=1e-3", ...]`` (or a mapping) -> ``{"optim.lr": 0.001, ...}``.

    Raises:
        MaedferError: an item without ``=``.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise MaedferError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-3")
        parsed[key.strip()] = parse_value(text)
    return parsed


def parse_model_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """A model's ``--set`` (``predict``, ``export``, ``test``, ...): the grammar of a recipe's
    ``--set`` (:func:`parse_overrides`), keyed by the model's own fields (``depth=2``,
    ``region_size=2,5,10``); lists come out as plain lists, for the model's constructor.

    Raises:
        MaedferError: an item without ``=``.
    """
    return {
        key: list(value) if isinstance(value, CommaList) else value
        for key, value in parse_overrides(items).items()
    }


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` asks for (YAML reads ``1e-3`` as a string, say)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        value = coerce(value, args[0], key)
        for meta in hint.__metadata__:
            if isinstance(meta, Choices) and value not in meta():
                raise MaedferError(f"{key} ({value!r}) must be one of {', '.join(meta())}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except MaedferError as exc:
                errors.append(str(exc))
        raise MaedferError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise MaedferError(f"{key} ({value!r}) must be one of {', '.join(map(str, args))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise MaedferError(f"{key} ({value!r}) must be true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise MaedferError(f"{key} ({value!r}) must be an integer")
        try:
            number = float(value)
        except ValueError:
            raise MaedferError(f"{key} ({value!r}) must be an integer") from None
        if number != int(number):
            raise MaedferError(f"{key} ({value!r}) must be an integer")
        return int(number)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise MaedferError(f"{key} ({value!r}) must be a number")
        try:
            return float(value)
        except ValueError:
            raise MaedferError(f"{key} ({value!r}) must be a number") from None
    if hint is str:
        if isinstance(value, CommaList):  # "1,2,3" given for a text option stays text
            return value.text
        if not isinstance(value, str):
            raise MaedferError(f"{key} ({value!r}) must be a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise MaedferError(f"{key} ({value!r}) must be a list of {len(args)} values")
        return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise MaedferError(f"{key} ({value!r}) must be a mapping, e.g. {{depth: 2}}")
        return dict(value)
    return value


def _set(cfg: Any, key: str, value: Any, *, root: Any, merge: bool = False) -> None:
    """Set dotted ``key`` of ``cfg`` (a key inside a dict field, e.g. ``model.overrides.depth``,
    sets that entry). ``merge``: a mapping given for a dict field sets its entries and keeps
    the others (the command line's ``--set``), instead of becoming the field's whole value."""
    parts = key.split(".")
    node = cfg
    for i, name in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise _unknown(key, keys(root))
        names = {f.name for f in dataclasses.fields(node)}
        if name not in names:
            raise _unknown(key, keys(root))
        hint = _hints(type(node))[name]
        rest = parts[i + 1 :]
        if dataclasses.is_dataclass(hint):
            if not rest:
                if not isinstance(value, Mapping):
                    raise MaedferError(f"{key} is a section; set its keys, e.g. {key}.<key>=...")
                for sub, v in value.items():
                    _set(root, f"{key}.{sub}", v, root=root, merge=merge)
                return
            node = getattr(node, name)
            continue
        if typing.get_origin(hint) is dict and (rest or merge):  # set entries, keep the others
            given = {".".join(rest): value} if rest else coerce(value, hint, key)
            setattr(node, name, merge_entries(getattr(node, name), given))
            return
        if rest:
            raise _unknown(key, keys(root))
        setattr(node, name, coerce(value, hint, key))
        return


def merge_entries(current: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping option after ``given``: its entries set, the others kept, an entry given as
    null removed (``--set 'model.overrides={num_heads: 3}'`` changes ``num_heads`` only)."""
    merged = dict(current)
    for entry, value in given.items():
        if value is None:
            merged.pop(str(entry), None)
        else:
            merged[str(entry)] = value
    return merged


def set_values(cfg: Any, overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply dotted overrides to ``cfg`` in place; returns them parsed.

    ``--set`` text (a sequence of ``KEY=VALUE``) changes what it names: a mapping given for a
    mapping option sets those entries; a mapping of values (from Python or a config file) gives
    each key its whole value.

    Raises:
        MaedferError: an unknown key or a value of the wrong type.
    """
    parsed = parse_overrides(overrides)
    merge = overrides is not None and not isinstance(overrides, Mapping)
    for key, value in parsed.items():
        _set(cfg, key, value, root=cfg, merge=merge)
    return parsed


def get(cfg: Any, key: str) -> Any:
    """The value of dotted ``key`` in ``cfg`` (``None`` where a part is missing)."""
    for name in key.split("."):
        cfg = getattr(cfg, name, None)
    return cfg


# ---------------------------------------------------------------------------------- writing


def plain(value: Any) -> Any:
    """``value`` as plain YAML/JSON types, recursively: dataclasses and mappings as dicts (string
    keys), tuples as lists, numbers and text as the built-in types (a numpy float, an enum), paths
    and any other object as text. The one converter for configs, run records and checkpoints."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum's value) as the text itself
    return str(value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML/JSON types (tuples as lists)."""
    return plain(cfg)


def flow(value: Any) -> str:
    """One YAML value on one line (``[0.9, 0.999]``, ``{depth: 2}``, ``null``, ``1.0e-03``)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()
    return text[1:-1].strip()


def to_yaml(cfg: Any, *, title: str) -> str:
    """A config as YAML, each key of a section with its help line as a comment (loads back
    equal); ``title`` is the first comment line, plain fields (``recipe``) go first as they are."""
    lines = [f"# {title}"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):
            lines.append(f"{f.name}: {flow(to_dict(value))}")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):
            continue
        lines.append(f"{f.name}:  # {f.metadata.get('help', '')}")
        for sub in dataclasses.fields(value):
            text = flow(to_dict(getattr(value, sub.name)))
            lines.append(f"  {sub.name}: {text}  # {sub.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


def markdown_rows(cfg: Any) -> list[str]:
    """``| `section.key` | `default` | help |`` for every key of a config's sections."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):
            continue
        for sub in dataclasses.fields(value):
            default = flow(to_dict(getattr(value, sub.name))).replace("|", "\\|")
            text = sub.metadata.get("help", "").replace("|", "\\|")
            out.append(f"| `{f.name}.{sub.name}` | `{default}` | {text} |")
    return out


# ---------------------------------------------------------------------------------- files


def read_yaml(path: Path | str, *, what: str = "config") -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping).

    Raises:
        MaedferError: a missing or unreadable file, invalid YAML (with its line), or a top
            level that is not a mapping.
    """
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaedferError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["bad YAML"])[0]
        raise MaedferError(f"{what} {path} is not valid YAML{line}: {problem}") from None
    except OSError as exc:
        raise MaedferError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise MaedferError(f"{what} {path} holds a {type(loaded).__name__}; expected a mapping")
    return dict(loaded)
